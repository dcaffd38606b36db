"""Tests of srdl_timm/data/coco.py on tiny real MS-COCO-2014-layout datasets (real JPEGs, real JSON).

Run: OMP_NUM_THREADS=1 pytest -q tests/test_data_coco.py
"""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import write_coco, write_corrupt_image
from srdl_timm.data import COCO_CLASSES, CocoMultiLabel, UnreadableImageError, create_multilabel_dataset, load_coco_json


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    val = write_coco(root, 'val', num_images=8, num_empty=2, seed=1)
    train = write_coco(root, 'train', num_images=6, num_empty=1, seed=2)
    return root, val, train


def test_labels_order_and_counts_match_what_was_written(coco, caplog):
    """Targets equal the written labels in JSON image order; classes are the 80 COCO names in category-id order;
    images without annotations are skipped and the count is logged."""
    root, val, _ = coco
    with caplog.at_level(logging.INFO, logger='srdl_timm.data.coco'):
        ds = create_multilabel_dataset('coco', str(root), 'val')
    assert isinstance(ds, CocoMultiLabel)
    assert ds.label_names == list(COCO_CLASSES) and ds.num_classes == 80
    assert len(ds) == 6 == len(val['kept_file_names'])
    assert [os.path.basename(p) for p in ds.image_paths] == val['kept_file_names']
    np.testing.assert_array_equal(ds.targets, val['targets'])
    assert ds.targets.dtype == np.float32
    for i, fname in enumerate(val['kept_file_names']):
        assert set(ds.labels(i)) == val['labels'][fname]
    assert ds.info['images_without_annotations'] == 2 and ds.info['images_total'] == 8
    assert '6 images with >=1 annotation (2 without skipped)' in caplog.text


def test_keep_empty_keeps_all_zero_rows(coco):
    """keep_empty=True keeps images without annotations as all-zero target rows (the full split)."""
    root, val, _ = coco
    ds = create_multilabel_dataset('coco', str(root), 'val', keep_empty=True)
    assert len(ds) == 8
    empty_rows = [i for i, p in enumerate(ds.image_paths) if os.path.basename(p) in val['empty_file_names']]
    assert len(empty_rows) == 2 and not ds.targets[empty_rows].any()


def test_crowd_annotations_count_as_present(coco):
    """A category whose only annotation in an image is iscrowd=1 is labelled present, and counted in info."""
    root, val, _ = coco
    ds = create_multilabel_dataset('coco', str(root), 'val')
    assert val['crowd_only'], 'fixture must contain crowd-only labels'
    for fname, name in val['crowd_only']:
        i = [os.path.basename(p) for p in ds.image_paths].index(fname)
        assert ds.targets[i, COCO_CLASSES.index(name)] == 1.0
    assert ds.info['labels_from_crowd_only'] == len(val['crowd_only'])


def test_getitem_returns_rgb_image_and_float_target(coco):
    """dataset[i] is (transform(PIL RGB), float32 tensor [80]); the transform is settable."""
    root, val, train = coco
    ds = create_multilabel_dataset('coco', str(root), 'train2014')
    img, target = ds[0]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (64, 48)
    assert target.dtype == torch.float32 and target.shape == (80,)
    assert torch.equal(target, torch.from_numpy(train['targets'][0]))
    ds.transform = lambda im: torch.zeros(3, im.size[1], im.size[0])
    assert ds[0][0].shape == (3, 48, 64)


def _corrupt_copy(tmp_path, coco, mutate):
    root, val, _ = coco
    data = json.loads(json.dumps(val['data']))
    mutate(data)
    ann = tmp_path / 'annotations' / 'instances_val2014.json'
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(data))
    os.symlink(os.path.join(root, 'val2014'), tmp_path / 'val2014')
    return tmp_path, str(ann)


@pytest.mark.parametrize('mutate,match', [
    (lambda d: d['annotations'][0].update(category_id=12), 'unknown category_id 12'),
    (lambda d: d['annotations'][0].update(image_id=999999), 'unknown image_id 999999'),
    (lambda d: d['annotations'][0].pop('category_id'), "no 'category_id'"),
    (lambda d: d.pop('categories'), "missing top-level key 'categories'"),
    (lambda d: d['images'].append(dict(d['images'][0])), 'duplicate image ids'),
    (lambda d: d['categories'].pop(), 'not the 80 MS-COCO categories'),
    (lambda d: d['categories'][0].update(name='human'), 'not the 80 MS-COCO categories'),
])
def test_bad_annotation_content_raises_naming_the_file(tmp_path, coco, mutate, match):
    """Unknown category/image ids, missing keys, duplicate ids and a non-COCO category list raise ValueError
    naming the annotation file."""
    root, ann = _corrupt_copy(tmp_path, coco, mutate)
    with pytest.raises(ValueError, match=match) as e:
        create_multilabel_dataset('coco', str(root), 'val')
    assert ann in str(e.value)


def test_truncated_json_raises_naming_the_file(tmp_path, coco):
    """A truncated annotation file raises ValueError naming it (not a bare JSONDecodeError)."""
    root, val, _ = coco
    text = open(val['ann_file']).read()
    bad = tmp_path / 'cut.json'
    bad.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match='malformed or truncated JSON') as e:
        load_coco_json(str(bad))
    assert str(bad) in str(e.value)


def test_missing_files_and_folders_raise(tmp_path, coco):
    """A missing root, annotation file, image folder or listed image raises FileNotFoundError naming it."""
    root, val, _ = coco
    with pytest.raises(FileNotFoundError, match='root folder not found'):
        create_multilabel_dataset('coco', str(tmp_path / 'nope'), 'val')
    with pytest.raises(FileNotFoundError, match='instances_val2014.json'):
        create_multilabel_dataset('coco', str(tmp_path), 'val')
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'instances_val2014.json').write_text(open(val['ann_file']).read())
    with pytest.raises(FileNotFoundError, match='image folder not found'):
        create_multilabel_dataset('coco', str(tmp_path), 'val')
    (tmp_path / 'val2014').mkdir()
    for f in val['kept_file_names'][1:]:
        os.symlink(os.path.join(val['image_dir'], f), tmp_path / 'val2014' / f)
    with pytest.raises(FileNotFoundError, match=val['kept_file_names'][0]):
        create_multilabel_dataset('coco', str(tmp_path), 'val')


def test_bad_split_and_option_raise(coco):
    """An unknown split or an option the dataset does not take raises ValueError naming it."""
    root, _, _ = coco
    with pytest.raises(ValueError, match="'test'"):
        create_multilabel_dataset('coco', str(root), 'test')
    with pytest.raises(ValueError, match='difficult'):
        create_multilabel_dataset('coco', str(root), 'val', difficult='ignore')
    with pytest.raises(ValueError, match='on_corrupt'):
        create_multilabel_dataset('coco', str(root), 'val', on_corrupt='ignore')


def test_corrupt_image_errors_by_default_and_is_skipped_on_request(tmp_path, caplog):
    """A truncated JPEG raises UnreadableImageError naming the file; with on_corrupt='skip' it yields a placeholder
    with an all-ignore target, a warning naming the file, and num_skipped counts it."""
    info = write_coco(tmp_path, 'val', num_images=3, num_empty=0, seed=4)
    bad = os.path.join(info['image_dir'], info['kept_file_names'][1])
    write_corrupt_image(bad, 'truncated')
    ds = create_multilabel_dataset('coco', str(tmp_path), 'val')
    ds[0]
    with pytest.raises(UnreadableImageError, match=info['kept_file_names'][1]):
        ds[1]
    ds = create_multilabel_dataset('coco', str(tmp_path), 'val', on_corrupt='skip')
    with caplog.at_level(logging.WARNING):
        img, target = ds[1]
    assert bool((target == -1).all()) and img.mode == 'RGB'
    assert ds.num_skipped == 1 and info['kept_file_names'][1] in caplog.text
    assert not bool((ds[2][1] == -1).any())
