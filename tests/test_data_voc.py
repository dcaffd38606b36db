"""Tests of srdl_timm/data/voc.py on tiny real VOC2007 devkits (real JPEGs, real XML).

Run: OMP_NUM_THREADS=1 pytest -q tests/test_data_voc.py
"""
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from fixtures_data import write_voc
from srdl_timm.data import VOC_CLASSES, VocMultiLabel, create_multilabel_dataset


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp('voc')
    return root, write_voc(root, {'trainval': 6, 'test': 5}, seed=3)


@pytest.mark.parametrize('policy,value', [('positive', 1.0), ('negative', 0.0), ('ignore', -1.0)])
def test_ternary_labels_and_training_policies(voc, policy, value):
    """Present → 1, absent → 0, difficult-only → 1 / 0 / -1 for the positive / negative / ignore policies; a class
    with a difficult and a non-difficult object is present."""
    root, info = voc
    ds = create_multilabel_dataset('voc', str(root), 'trainval', difficult=policy)
    tern = info['ternary']['trainval']
    assert (tern == -1).any() and ds.info['difficult_only_entries'] == int((tern == -1).sum())
    expected = np.where(tern == -1, value, tern).astype(np.float32)
    np.testing.assert_array_equal(ds.targets, expected)
    assert ds.label_names == list(VOC_CLASSES)
    assert [os.path.basename(p)[:-4] for p in ds.image_paths] == info['ids']['trainval']


def test_default_policy_is_positive_for_training_and_ignore_for_test(voc, caplog):
    """Without a policy, trainval uses 'positive' (ML-GCN) and test uses 'ignore' (standard evaluation); counts
    and the policy are logged."""
    root, info = voc
    assert create_multilabel_dataset('voc', str(root), 'trainval').difficult == 'positive'
    with caplog.at_level(logging.INFO, logger='srdl_timm.data.voc'):
        test = create_multilabel_dataset('voc', str(root), 'test')
    assert test.difficult == 'ignore' and len(test) == 5
    assert 'VOC2007 test: 5 images' in caplog.text and 'policy: ignore' in caplog.text
    tern = info['ternary']['test']
    np.testing.assert_array_equal(test.targets, tern.astype(np.float32))
    img, target = test[0]
    assert img.mode == 'RGB' and target.dtype == torch.float32 and (target == -1).any()


def test_difficult_setter_recomputes_targets(voc):
    """Changing dataset.difficult rewrites the targets of the difficult-only entries only."""
    root, info = voc
    ds = create_multilabel_dataset('voc', str(root), 'test')
    before = ds.targets.copy()
    ds.difficult = 'positive'
    changed = before != ds.targets
    assert np.array_equal(changed, info['ternary']['test'] == -1) and (ds.targets[changed] == 1).all()
    assert ds.info['difficult_policy'] == 'positive'
    with pytest.raises(ValueError, match='difficult policy'):
        ds.difficult = 'maybe'


@pytest.mark.parametrize('layout', ['voc2007', 'direct'])
def test_alternative_roots_are_found(tmp_path, layout):
    """root may be the folder above VOC2007 or VOC2007 itself, not only the folder above VOCdevkit."""
    info = write_voc(tmp_path, {'test': 3}, layout=layout, seed=5)
    ds = VocMultiLabel(str(tmp_path), 'test')
    assert len(ds) == 3 and ds.info['voc_root'] == info['voc_root']


def _copy(tmp_path, voc):
    root, info = voc
    dst = tmp_path / 'copy'
    shutil.copytree(root, dst)
    return dst, os.path.join(str(dst), 'VOCdevkit', 'VOC2007'), info


def test_malformed_xml_raises_naming_the_file(tmp_path, voc):
    """A truncated XML file raises ValueError naming it."""
    dst, vr, info = _copy(tmp_path, voc)
    xml = os.path.join(vr, 'Annotations', info['ids']['test'][2] + '.xml')
    text = open(xml).read()
    open(xml, 'w').write(text[: len(text) // 2])
    with pytest.raises(ValueError, match='malformed XML') as e:
        create_multilabel_dataset('voc', str(dst), 'test')
    assert xml in str(e.value)


@pytest.mark.parametrize('old,new,match', [
    ('<name>', '<name>zebra', "unknown class 'zebra"),
    ('<difficult>0</difficult>', '<difficult>yes</difficult>', "<difficult> 'yes'"),
])
def test_bad_object_fields_raise_naming_the_file(tmp_path, voc, old, new, match):
    """An unknown class name or a <difficult> value other than 0/1 raises ValueError naming the XML file."""
    dst, vr, info = _copy(tmp_path, voc)
    for image_id in info['ids']['trainval']:
        xml = os.path.join(vr, 'Annotations', image_id + '.xml')
        text = open(xml).read()
        if old in text:
            open(xml, 'w').write(text.replace(old, new, 1))
            break
    with pytest.raises(ValueError, match=match) as e:
        create_multilabel_dataset('voc', str(dst), 'trainval')
    assert xml in str(e.value)


def test_missing_files_raise(tmp_path, voc):
    """A missing devkit, split file, XML or JPEG raises FileNotFoundError naming what is missing."""
    with pytest.raises(FileNotFoundError, match='VOCdevkit'):
        create_multilabel_dataset('voc', str(tmp_path), 'test')
    dst, vr, info = _copy(tmp_path, voc)
    os.remove(os.path.join(vr, 'JPEGImages', info['ids']['test'][1] + '.jpg'))
    with pytest.raises(FileNotFoundError, match=info['ids']['test'][1] + '.jpg'):
        create_multilabel_dataset('voc', str(dst), 'test')
    os.remove(os.path.join(vr, 'Annotations', info['ids']['test'][0] + '.xml'))
    with pytest.raises(FileNotFoundError, match=info['ids']['test'][0] + '.xml'):
        create_multilabel_dataset('voc', str(dst), 'test')
    with pytest.raises(FileNotFoundError, match='val.txt'):
        create_multilabel_dataset('voc', str(dst), 'val')


def test_bad_split_and_policy_raise(voc):
    """An unknown split or difficult policy raises ValueError naming it."""
    root, _ = voc
    with pytest.raises(ValueError, match="'validation'"):
        create_multilabel_dataset('voc', str(root), 'validation')
    with pytest.raises(ValueError, match="'hard'"):
        create_multilabel_dataset('voc', str(root), 'test', difficult='hard')


def test_image_without_objects_is_skipped_and_counted(tmp_path, voc, caplog):
    """An XML with no <object> is skipped with a warning naming it (kept as all-zero with keep_empty=True)."""
    dst, vr, info = _copy(tmp_path, voc)
    image_id = info['ids']['test'][3]
    xml = os.path.join(vr, 'Annotations', image_id + '.xml')
    text = open(xml).read()
    open(xml, 'w').write(text[:text.index('<object>')] + '</annotation>')
    with caplog.at_level(logging.WARNING):
        ds = create_multilabel_dataset('voc', str(dst), 'test')
    assert len(ds) == 4 and image_id not in ds.image_ids and xml in caplog.text
    assert ds.info['images_without_objects'] == 1
    kept = create_multilabel_dataset('voc', str(dst), 'test', keep_empty=True)
    assert len(kept) == 5 and not kept.targets[kept.image_ids.index(image_id)].any()
