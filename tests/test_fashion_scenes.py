"""Tests of the Fashion Scenes builder (benchmarks/fashion_scenes/) on the tiny preset, real data only.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_fashion_scenes.py
Tests that need Fashion-MNIST are skipped (with the install command) where it is not installed.
"""
import gzip
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import benchmarks.fashion_scenes as fs  # noqa: E402
from benchmarks.fashion_scenes import (  # noqa: E402
    FASHION_SCENES_CLASSES, LABEL_MODEL, build_fashion_scenes, cooccurrence_counts, load_fashion_mnist,
    render_scene, resolve_params, sample_label_sets, scene_label_sets,
)

TINY = dict(preset='tiny')  # 12 images per split at 64 px


def _have_fmnist() -> bool:
    try:
        load_fashion_mnist('test')
        return True
    except FileNotFoundError:
        return False


needs_fmnist = pytest.mark.skipif(not _have_fmnist(),
                                  reason='Fashion-MNIST missing: apt-get install dataset-fashion-mnist')


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    if not _have_fmnist():
        pytest.skip('Fashion-MNIST missing: apt-get install dataset-fashion-mnist')
    root = tmp_path_factory.mktemp('fs') / 'tiny'
    stats = build_fashion_scenes(root, seed=0, **TINY)
    return root, stats


# ------------------------------------------------------------------------------------------------ data files

@needs_fmnist
def test_load_fashion_mnist_reads_real_idx_files():
    """Both splits load with the published sizes, 28×28 uint8 items, and balanced labels 0..9."""
    x, y = load_fashion_mnist('train')
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    xt, yt = load_fashion_mnist('test')
    assert xt.shape == (10000, 28, 28) and np.bincount(yt, minlength=10).tolist() == [1000] * 10
    assert x.max() == 255 and x[:, 0, 0].mean() < 5  # white items on a black background


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    """An empty Fashion-MNIST folder gives FileNotFoundError naming the folder and the apt-get command, and
    a build pointed at it leaves neither the root nor a partial build behind."""
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist('train', fmnist_dir=tmp_path)
    assert 'apt-get install dataset-fashion-mnist' in str(e.value) and str(tmp_path) in str(e.value)
    out = tmp_path / 'out' / 'scenes'
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        build_fashion_scenes(out, fmnist_dir=tmp_path, **TINY)
    assert not out.exists() and list((tmp_path / 'out').iterdir()) == []


def test_corrupt_fashion_mnist_file_is_named(tmp_path):
    """A file with a wrong IDX magic number raises ValueError naming that file."""
    for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
        with gzip.open(tmp_path / name, 'wb') as f:
            f.write(b'\x00\x00\x08\x01' + b'\x00' * 20)
    with pytest.raises(ValueError, match='t10k-images-idx3-ubyte.gz'):
        load_fashion_mnist('test', fmnist_dir=tmp_path)


def test_resolve_params_rejects_unknown_and_invalid():
    """Unknown override keys raise TypeError and invalid values ValueError, each naming the parameter."""
    with pytest.raises(TypeError, match='num_trian'):
        resolve_params('quick', num_trian=5)
    with pytest.raises(ValueError, match='scale_range'):
        resolve_params('quick', scale_range=(0.5, 0.2))
    with pytest.raises(ValueError, match='preset'):
        resolve_params('huge')
    assert resolve_params('tiny', scale_range=(0.2, 0.3))['scale_range'] == [0.2, 0.3]


# ------------------------------------------------------------------------------------------------ label model

def test_cooccurrence_structure_groups_unusual_rare():
    """Outfit members co-occur far more often than non-members (P(j|i) > 0.5 vs < 0.2), unusual cross-group
    pairs still occur, and the rare categories stay within 1-4 % of images."""
    idx = {n: i for i, n in enumerate(FASHION_SCENES_CLASSES)}
    sets = sample_label_sets(3000, np.random.default_rng(123))
    co = cooccurrence_counts(sets)
    cond = co / np.maximum(np.diag(co), 1)[:, None]
    groups = [('t-shirt', 'trousers', 'sneaker'), ('coat', 'pullover', 'ankle boot'), ('dress', 'sandal')]
    for g in groups:
        others = [c for c in idx if c not in g and c not in LABEL_MODEL['rare'] and c not in ('trousers', 'ankle boot')]
        for a in g:
            for b in g:
                if a != b:
                    assert cond[idx[a], idx[b]] > 0.5, (a, b, cond[idx[a], idx[b]])
            for o in others:
                assert cond[idx[a], idx[o]] < 0.2, (a, o, cond[idx[a], idx[o]])
    # unusual combinations exist: e.g. t-shirt with coat, dress with sneaker
    assert co[idx['t-shirt'], idx['coat']] > 0 and co[idx['dress'], idx['sneaker']] > 0
    freq = np.diag(co) / len(sets)
    for rare in LABEL_MODEL['rare']:
        assert 0.01 <= freq[idx[rare]] <= 0.04, (rare, freq[idx[rare]])
    common = [freq[idx[c]] for c in idx if c not in LABEL_MODEL['rare']]
    assert min(common) > 0.2
    # rare 'shirt' lives in the office context: trousers and ankle boot are likely given shirt
    assert cond[idx['shirt'], idx['trousers']] > 0.5 and cond[idx['shirt'], idx['ankle boot']] > 0.4


def test_label_sets_respect_max_objects_and_are_seeded():
    """Every sampled scene has 1..max_objects objects; the same seed gives the same sets, another seed not."""
    a = scene_label_sets(0, 'train', 300, max_objects=4)
    assert all(1 <= len(s) <= 4 for s in a)
    assert a == scene_label_sets(0, 'train', 300, max_objects=4)
    assert a != scene_label_sets(1, 'train', 300, max_objects=4)
    assert a != scene_label_sets(0, 'val', 300, max_objects=4)


# ------------------------------------------------------------------------------------------------ rendering

@needs_fmnist
def test_render_scene_pastes_what_it_reports():
    """render_scene reports exactly the categories it pasted: each reported object's bbox region differs from
    the bare background, occlusion never hides more than 1 - min_visible of an object, and with a 1 % floor
    on visibility objects that fit cannot be dropped."""
    x, y = load_fashion_mnist('test')
    params = resolve_params('tiny', image_size=96)
    rng_labels = np.random.default_rng(5)
    checked = 0
    for trial in range(10):
        cats = [int(c) for c in rng_labels.choice(10, size=5)]
        items = [x[int(np.flatnonzero(y == c)[trial])] for c in cats]
        img, objs = render_scene(cats, items, params, np.random.default_rng([7, trial]))
        bare, none = render_scene([], [], params, np.random.default_rng([7, trial]))
        assert none == [] and img.shape == bare.shape == (96, 96, 3) and img.dtype == np.uint8
        assert objs and objs[0]['position'] == 0  # the first object is always placed
        assert [o['category'] for o in objs] == [cats[o['position']] for o in objs]
        for o in objs:
            bx, by, bw, bh = o['bbox']
            assert 0 <= bx and 0 <= by and bx + bw <= 96 and by + bh <= 96 and bw > 0 and bh > 0
            assert o['visible_fraction'] >= params['min_visible'] - 1e-6
            diff = np.abs(img[by:by + bh, bx:bx + bw].astype(int) - bare[by:by + bh, bx:bx + bw]).max(-1)
            assert (diff > 20).sum() > 0.5 * o['area']
            checked += 1
    assert checked >= 30
    # nearly unconstrained visibility → nothing is dropped
    loose = resolve_params('tiny', image_size=96, min_visible=0.01)
    cats = [0, 1, 2, 3]
    _, objs = render_scene(cats, [x[int(np.flatnonzero(y == c)[0])] for c in cats], loose,
                           np.random.default_rng(0))
    assert [o['category'] for o in objs] == cats


# ------------------------------------------------------------------------------------------------ built dataset

@needs_fmnist
def test_coco_json_loads_and_matches_layout(tiny_root):
    """Each split's JSON loads with pycocotools, lists the 10 categories in id order, 12 images with ids from
    1, annotations with in-image bboxes and iscrowd 0, and an info block with seed, version and parameters."""
    from pycocotools.coco import COCO
    root, stats = tiny_root
    for split in fs.SPLITS:
        coco = COCO(str(root / 'annotations' / f'{split}.json'))
        cats = coco.loadCats(coco.getCatIds())
        assert [c['name'] for c in cats] == list(FASHION_SCENES_CLASSES)
        assert [c['id'] for c in cats] == list(range(1, 11))
        assert sorted(coco.getImgIds()) == list(range(1, 13))
        info = coco.dataset['info']
        assert info['seed'] == 0 and info['version'] == fs.FASHION_SCENES_VERSION
        assert info['params'] == resolve_params('tiny') and info['image_dir'] == f'images/{split}'
        for img_id in coco.getImgIds():
            img = coco.loadImgs(img_id)[0]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert anns, f'{split} image {img_id} has no objects'
            for a in anns:
                x, y, w, h = a['bbox']
                assert a['iscrowd'] == 0 and a['area'] > 0 and 1 <= a['category_id'] <= 10
                assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= img['width'] and y + h <= img['height']
        assert stats['splits'][split]['num_images'] == 12


@needs_fmnist
def test_images_are_valid_jpegs_of_declared_size(tiny_root):
    """Every listed image exists, decodes fully as an RGB JPEG, and has the declared width and height."""
    root, _ = tiny_root
    for split in fs.SPLITS:
        d = json.loads((root / 'annotations' / f'{split}.json').read_text())
        files = sorted(p.name for p in (root / 'images' / split).iterdir())
        assert files == sorted(i['file_name'] for i in d['images'])
        for im in d['images']:
            path = root / 'images' / split / im['file_name']
            assert path.read_bytes()[:2] == b'\xff\xd8'
            with Image.open(path) as pil:
                assert pil.format == 'JPEG' and pil.mode == 'RGB'
                assert pil.size == (im['width'], im['height']) == (64, 64)
                pil.load()


@needs_fmnist
def test_annotations_are_the_sampled_objects_from_the_right_items(tiny_root):
    """Per image the annotated categories are the sampled objects minus the counted drops; every annotation's
    source item really has that Fashion-MNIST label; train and val items are disjoint and test items come from
    Fashion-MNIST's test split."""
    root, stats = tiny_root
    labels = {'train': load_fashion_mnist('train')[1], 'test': load_fashion_mnist('test')[1]}
    used = {}
    for split in fs.SPLITS:
        d = json.loads((root / 'annotations' / f'{split}.json').read_text())
        assert d['info']['fashion_mnist_split'] == ('test' if split == 'test' else 'train')
        src = labels[d['info']['fashion_mnist_split']]
        wanted = scene_label_sets(0, split, 12, d['info']['params']['max_objects'])
        dropped = 0
        for im, want in zip(d['images'], wanted):
            anns = [a for a in d['annotations'] if a['image_id'] == im['id']]
            got = [a['category_id'] - 1 for a in anns]
            remaining = list(want)
            for g in got:
                remaining.remove(g)  # raises if an annotation is not one of the sampled objects
            dropped += len(remaining)
            for a in anns:
                assert src[a['fmnist_index']] == a['category_id'] - 1
        assert dropped == stats['splits'][split]['dropped_objects']
        used[split] = {a['fmnist_index'] for a in d['annotations']}
    assert not used['train'] & used['val']


@needs_fmnist
def test_stats_report_contents(tiny_root):
    """stats.json equals the returned stats; its label counts and co-occurrence agree with the JSON; object
    sizes include small objects (< 3 % of the image); some objects are occluded; the PNG is a real PNG."""
    root, stats = tiny_root
    assert json.loads((root / 'stats.json').read_text()) == stats
    for split in fs.SPLITS:
        d = json.loads((root / 'annotations' / f'{split}.json').read_text())
        sets = [[a['category_id'] - 1 for a in d['annotations'] if a['image_id'] == im['id']] for im in d['images']]
        co = cooccurrence_counts(sets)
        st = stats['splits'][split]
        assert st['cooccurrence'] == co.tolist()
        assert [st['label_count'][c] for c in FASHION_SCENES_CLASSES] == np.diag(co).tolist()
        assert st['num_objects'] == len(d['annotations'])
    areas = stats['splits']['train']['object_area_fraction']['quantiles']
    assert areas['p0'] < 0.03 < areas['p100']
    assert stats['splits']['train']['visible_fraction']['quantiles']['p0'] < 0.95
    with Image.open(root / 'cooccurrence.png') as png:
        assert png.format == 'PNG' and png.size[0] > 400


@needs_fmnist
def test_same_seed_same_bytes_other_seed_differs(tiny_root, tmp_path):
    """A second build with the same seed (here rendered by 2 worker processes) is byte-identical file by file;
    a build with another seed differs in its annotations and in every image."""
    root, _ = tiny_root
    again = tmp_path / 'again'
    build_fashion_scenes(again, seed=0, workers=2, **TINY)
    assert _tree_digest(again) == _tree_digest(root)
    other = tmp_path / 'other'
    build_fashion_scenes(other, seed=1, **TINY)
    a, b = _tree_digest(root), _tree_digest(other)
    assert a.keys() == b.keys()
    assert a['annotations/train.json'] != b['annotations/train.json']
    assert all(a[k] != b[k] for k in a if k.startswith('images/'))


@needs_fmnist
def test_reuse_partial_detection_and_protection(tmp_path, caplog):
    """A complete build is reused untouched; a root with a missing or truncated image, or without stats.json,
    is rebuilt; a complete build with other settings, or a folder not marked as this generator's (even with
    the same layout), is refused without overwrite=True; a dead builder's partial folder is cleaned up."""
    root = tmp_path / 'scenes'
    stats = build_fashion_scenes(root, seed=3, **TINY)
    digest = _tree_digest(root)
    mtime = (root / 'annotations' / 'train.json').stat().st_mtime_ns
    assert build_fashion_scenes(root, seed=3, **TINY) == stats
    assert (root / 'annotations' / 'train.json').stat().st_mtime_ns == mtime  # not rewritten

    (root / 'images' / 'val' / '000004.jpg').unlink()
    with caplog.at_level(logging.WARNING, logger=fs.__name__):
        assert build_fashion_scenes(root, seed=3, **TINY) == stats
    assert 'incomplete' in caplog.text and _tree_digest(root) == digest

    (root / 'images' / 'test' / '000001.jpg').write_bytes(b'\xff\xd8 truncated')
    build_fashion_scenes(root, seed=3, **TINY)
    assert _tree_digest(root) == digest

    (root / 'stats.json').unlink()
    build_fashion_scenes(root, seed=3, **TINY)
    assert _tree_digest(root) == digest

    with pytest.raises(FileExistsError, match='overwrite=True'):
        build_fashion_scenes(root, seed=4, **TINY)
    assert _tree_digest(root) == digest
    new = build_fashion_scenes(root, seed=4, overwrite=True, **TINY)
    assert new['seed'] == 4 and json.loads((root / 'stats.json').read_text())['seed'] == 4

    mine = tmp_path / 'my_coco'  # same layout, someone else's data: never replaced
    (mine / 'annotations').mkdir(parents=True)
    (mine / 'images').mkdir()
    (mine / 'annotations' / 'train.json').write_text('{"info": {"description": "COCO 2014"}}')
    with pytest.raises(FileExistsError, match='not a Fashion Scenes build'):
        build_fashion_scenes(mine, **TINY)
    assert (mine / 'annotations' / 'train.json').exists()

    stale = tmp_path / f'{fs.sources._PARTIAL_PREFIX}fresh-abc'
    (stale / 'images').mkdir(parents=True)
    (stale / fs.sources._PID_FILE).write_text('999999999')  # no such process
    build_fashion_scenes(tmp_path / 'fresh', seed=3, **TINY)
    assert not stale.exists()
    assert not list(tmp_path.glob(f'{fs.sources._PARTIAL_PREFIX}*'))


@needs_fmnist
def test_cli_prints_summary(tmp_path, capsys):
    """The command line builds the tiny preset and prints the per-split and per-category summary tables."""
    rc = fs.main(['--root', str(tmp_path / 'cli'), '--preset', 'tiny', '--seed', '2', '--set', 'num_test=5'])
    out = capsys.readouterr().out
    assert rc == 0
    assert '| train | 12 |' in out and '| test | 5 |' in out and '| ankle boot |' in out
    d = json.loads((tmp_path / 'cli' / 'annotations' / 'test.json').read_text())
    assert len(d['images']) == 5 and d['info']['seed'] == 2
    assert fs.main(['--root', str(tmp_path / 'cli2'), '--preset', 'tiny', '--fmnist-dir', str(tmp_path)]) == 2
    assert 'apt-get install dataset-fashion-mnist' in capsys.readouterr().err


@needs_fmnist
def test_concurrent_builds_of_one_root_build_once_and_both_read_it(tiny_root, tmp_path):
    """Three processes started together on one root (as parallel benchmark jobs do): each returns the complete
    build's statistics, the root is byte-identical to a serial build, exactly one of them built it (the others
    reused it: one 'built' log line in all), and no partial folder is left."""
    import subprocess
    root, _ = tiny_root
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ('import logging, sys; sys.path.insert(0, sys.argv[1]); logging.basicConfig(level=logging.INFO); '
            'import benchmarks.fashion_scenes as fs; import json; '
            'print(json.dumps(fs.build_fashion_scenes(sys.argv[2], seed=0, preset="tiny")["splits"]["test"]))')
    target = tmp_path / 'shared'
    procs = [subprocess.Popen([sys.executable, '-c', code, repo, str(target)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
             for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert len({out for out, _ in results}) == 1
    assert sum(err.count('built Fashion Scenes') for _, err in results) == 1
    assert _tree_digest(target) == _tree_digest(root)
    assert not list(tmp_path.glob(f'{fs.sources._PARTIAL_PREFIX}*'))
