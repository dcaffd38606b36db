"""Tests for srdl_timm.labels.names: a model's label names live in one store (timm's pretrained_cfg['label_names'])
that the builder, reset_classifier and the loader write through store_label_names and every caller reads through
model_label_names; label files; output names with placeholders; the benchmarks' known label sets."""
import json
import logging

import pytest
import timm
import torch

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm import SRDL
from srdl_timm.data.label_sets import COCO_CLASSES, VOC_CLASSES
from srdl_timm.errors import InputError
from srdl_timm.labels import names as L

NAMES = ['sun', 'sea', 'sky']


def _model(**kwargs):
    return timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16), **kwargs)


def test_the_builder_writes_the_store_and_reset_classifier_keeps_it_in_step():
    """create_model stores label_names= in pretrained_cfg['label_names'] (a tuple, timm's type) and the head's
    label_names; reset_classifier with new names, or with a class count the names do not fit, updates both."""
    model = _model(label_names=NAMES)
    assert model.pretrained_cfg['label_names'] == tuple(NAMES) and model.label_names == NAMES
    assert L.model_label_names(model) == NAMES
    model.reset_classifier(2, label_names=['up', 'down'], label_embeddings=torch.randn(2, 16))
    assert model.pretrained_cfg['label_names'] == ('up', 'down') and L.model_label_names(model) == ['up', 'down']
    model.reset_classifier(4, label_embeddings=torch.randn(4, 16))
    assert model.pretrained_cfg['label_names'] is None and model.label_names is None
    assert L.model_label_names(model) is None
    assert _model().pretrained_cfg.get('label_names') is None


def test_model_label_names_reads_the_store_first_and_checks_the_count(caplog):
    """The store wins over an SRDL's own attribute; names whose count does not fit the classes are ignored with a
    warning; a model without pretrained_cfg answers from its attribute; an {index: name} dict is read in index
    order."""
    model = _model(label_names=NAMES)
    model.pretrained_cfg = dict(model.pretrained_cfg, label_names=['a', 'b', 'c'])
    assert L.model_label_names(model) == ['a', 'b', 'c']
    model.pretrained_cfg['label_names'] = ['a', 'b']
    with caplog.at_level(logging.WARNING, logger='srdl_timm.labels.names'):
        assert L.model_label_names(model) == NAMES
    assert "ignoring pretrained_cfg['label_names']: 2 names for a model with 3 classes" in caplog.text
    assert L.model_label_names(model, num_classes=2) == ['a', 'b']
    model.pretrained_cfg['label_names'] = {'2': 'z', '0': 'x', '1': 'y'}
    assert L.model_label_names(model) == ['x', 'y', 'z']
    bare = SRDL('test_resnet', num_classes=3, label_names=NAMES, label_embeddings=torch.randn(3, 8))
    assert not hasattr(bare, 'pretrained_cfg') and L.model_label_names(bare) == NAMES
    plain = timm.create_model('test_resnet', num_classes=3)
    assert L.model_label_names(plain) is None


def test_store_label_names_keeps_fitting_names_and_drops_others():
    """With no names given, stored names that fit the class count are kept (and adopted by an SRDL), names for
    another head are dropped; given names replace both copies."""
    model = _model()
    model.pretrained_cfg['label_names'] = ['a', 'b', 'c']
    assert L.store_label_names(model) == ['a', 'b', 'c'] and model.label_names == ['a', 'b', 'c']
    assert model.pretrained_cfg['label_names'] == ('a', 'b', 'c')
    model.pretrained_cfg['label_names'] = ['a', 'b']
    assert L.store_label_names(model) is None and model.pretrained_cfg['label_names'] is None
    assert L.store_label_names(model, NAMES) == NAMES and model.pretrained_cfg['label_names'] == tuple(NAMES)
    plain = timm.create_model('test_resnet', num_classes=3)
    assert L.store_label_names(plain, NAMES) == NAMES and not hasattr(plain, 'label_names')
    assert L.model_label_names(plain) == NAMES


def test_read_label_file_takes_json_and_text(tmp_path):
    """A .json list or an object with label_names, and a one-name-a-line text file, give the names; bad JSON or an
    empty list is an InputError naming the file."""
    (tmp_path / 'a.json').write_text(json.dumps(NAMES))
    (tmp_path / 'b.json').write_text(json.dumps({'label_names': NAMES}))
    (tmp_path / 'c.txt').write_text('\ufeffsun\n\nsea\nsky\n', encoding='utf-8')
    for name in ('a.json', 'b.json', 'c.txt'):
        assert L.read_label_file(str(tmp_path / name)) == NAMES
    (tmp_path / 'bad.json').write_text('[1, ')
    with pytest.raises(InputError, match='bad.json: not valid JSON'):
        L.read_label_file(str(tmp_path / 'bad.json'))
    (tmp_path / 'empty.json').write_text('[]')
    with pytest.raises(InputError, match='empty.json: expected a JSON list'):
        L.read_label_file(str(tmp_path / 'empty.json'))
    with pytest.raises(InputError, match='not found'):
        L.read_label_file(str(tmp_path / 'missing.json'))


def test_resolve_label_names_prefers_the_file_then_the_model_then_placeholders(tmp_path, caplog):
    """A label file must hold one name per output; without it the model's names are used; a model without names
    gets class_0 … class_{C-1} and a warning."""
    (tmp_path / 'n.txt').write_text('w\nx\ny\n')
    model = _model(label_names=NAMES)
    assert L.resolve_label_names(model, 3, str(tmp_path / 'n.txt')) == ['w', 'x', 'y']
    with pytest.raises(InputError, match='holds 3 label names but the model has 4 outputs'):
        L.resolve_label_names(model, 4, str(tmp_path / 'n.txt'))
    assert L.resolve_label_names(model, 3) == NAMES
    with caplog.at_level(logging.WARNING, logger='srdl_timm.labels.names'):
        assert L.resolve_label_names(_model(), 3) == ['class_0', 'class_1', 'class_2']
    assert 'carries no label names' in caplog.text


def test_known_label_sets_are_the_benchmarks():
    """80 / 20 classes without names, or with the benchmark's names in order, are COCO / VOC; other names or
    counts are not."""
    assert L.known_label_set(80) == 'coco' and L.known_label_set(20, VOC_CLASSES) == 'voc'
    assert L.known_label_set(20, list(reversed(VOC_CLASSES))) is None and L.known_label_set(7) is None
    assert L.known_label_names(80) == list(COCO_CLASSES) and L.known_label_names(3) is None
