"""Tests for srdl_timm.word_vectors: reading word-vector files (errors name the file and line) and the offline
GloVe package's Parquet word index. (Loading that feeds label embeddings is tested in tests/test_embeddings.py.)"""
import pytest

from srdl_timm import word_vectors as W


def _write_text(path, lines):
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')


def test_malformed_text_files_name_file_and_line(tmp_path):
    """A bad number or a wrong field count raises ValueError naming the file and line; a missing file is FileNotFoundError."""
    bad = tmp_path / 'bad.txt'
    _write_text(bad, ['red 1 0 0', 'green 0 x 0'])
    with pytest.raises(ValueError, match=r'bad\.txt:2: non-numeric.*green'):
        W.load_word_vectors(bad)
    short = tmp_path / 'short.txt'
    _write_text(short, ['red 1 0 0', 'green 0 1'])
    with pytest.raises(ValueError, match=r'short\.txt:2: expected a word and 3 numbers'):
        W.load_word_vectors(short)
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        W.load_word_vectors(tmp_path / 'nope.txt')


def test_word_index_reader_needs_one_string_column(tmp_path):
    """The Parquet word index is read by pyarrow in row order; a file without exactly one string column, or one
    that is not Parquet, is a ValueError naming the file."""
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq
    good = tmp_path / 'index.parquet'
    pq.write_table(pa.table({'row': [0, 1, 2], 'word': ['the', 'ünïcode', 'cat']}), good)
    assert W._read_word_index(str(good)) == ['the', 'ünïcode', 'cat']
    two = tmp_path / 'two.parquet'
    pq.write_table(pa.table({'a': ['x'], 'b': ['y']}), two)
    with pytest.raises(ValueError, match="two.parquet: expected exactly one string column.*'a', 'b'"):
        W._read_word_index(str(two))
    bad = tmp_path / 'bad.parquet'
    bad.write_bytes(b'not parquet at all')
    with pytest.raises(ValueError, match='bad.parquet: cannot read the word index'):
        W._read_word_index(str(bad))
