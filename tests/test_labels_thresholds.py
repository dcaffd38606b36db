"""Tests for srdl_timm.labels.thresholds: per-class decision thresholds tuned for the best F1 per class (checked
against an exhaustive search), where they were tuned (split fingerprints), their one store on a model (also through
timm.create_model), and their JSON form with its errors."""
import json

import numpy as np
import pytest
import timm
import torch

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm.errors import InputError
from srdl_timm.labels import thresholds as T
from srdl_timm.metrics import precision_recall_f1


def _f1(pred, positive):
    tp = (pred & positive).sum()
    return 2 * tp / (pred.sum() + positive.sum())


def _best_f1_exhaustive(scores, positive):
    """Oracle: the best F1 over every cut "score >= s" for s a score of the class (all that can differ)."""
    return max(_f1(scores >= s, positive) for s in np.unique(scores))


def _data(n=60, c=4, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < [0.5, 0.2, 0.05, 0.35]).astype(np.float32)
    logits = rng.normal(size=(n, c)) + 2.0 * targets
    logits[:10, 0] = np.round(logits[:10, 0])  # ties
    targets[5:9, 3] = -1  # not annotated
    targets[:, 2] = 0  # a class without a positive
    return logits, targets


def test_tuned_thresholds_reach_the_best_f1_of_each_class():
    """Each tuned threshold gives its class the best F1 an exhaustive search over all cuts finds (ties cut as whole
    groups, -1 entries left out), lies strictly between the scores it separates, and a class without a positive keeps
    0.5 and is named."""
    logits, targets = _data()
    tuned = T.tune_thresholds(logits, targets, label_names=['a', 'b', 'c', 'd'], tool='test')
    probs = 1 / (1 + np.exp(-logits))
    for c in (0, 1, 3):
        valid = targets[:, c] != -1
        s, positive = probs[valid, c], targets[valid, c] == 1
        assert _f1(s >= tuned.values[c], positive) == pytest.approx(_best_f1_exhaustive(s, positive))
        assert not np.any(np.isclose(s, tuned.values[c], rtol=0, atol=1e-12))  # halfway, not on a score
    assert tuned.values[2] == T.DEFAULT_THRESHOLD and tuned.info['untuned'] == ['c']
    assert tuned.info['rule'] == 'f1' and tuned.info['tool'] == 'test' and 'best F1' in tuned.describe()
    # the per-class cut of srdl_timm.metrics gives the same F1s: CF1 of each class at the tuned thresholds
    pred = probs >= np.asarray(tuned.values)
    for c in (0, 1, 3):
        one = precision_recall_f1(pred[:, [c]], targets[:, [c]])
        valid = targets[:, c] != -1
        assert one['OF1'] == pytest.approx(_best_f1_exhaustive(probs[valid, c], targets[valid, c] == 1))


def test_threshold_is_halfway_in_logit_space_and_highest_on_ties():
    """One class: positives at logits 3 and 1, negatives at 2 and -1: cutting below 1 (F1 0.8) beats cutting
    below 3 (F1 0.67); the threshold is sigmoid of the midpoint of 1 and -1 (= 0.5); with all entries positive it
    sits 0.5 logit below the lowest."""
    tuned = T.tune_thresholds(np.array([[3.0], [2.0], [1.0], [-1.0]]), np.array([[1], [0], [1], [0]]))
    assert tuned.values[0] == pytest.approx(0.5)
    tuned = T.tune_thresholds(np.array([[0.0], [2.0]]), np.array([[1], [1]]))
    assert tuned.values[0] == pytest.approx(1 / (1 + np.exp(0.5)))
    # equal F1 (2/3) cutting below 4 and below 2: the higher threshold wins (fewer labels)
    tuned = T.tune_thresholds(np.array([[4.0], [3.0], [2.5], [2.0]]), np.array([[1], [0], [0], [1]]))
    assert tuned.values[0] == pytest.approx(1 / (1 + np.exp(-3.5)))


def test_bad_inputs_to_tuning_are_refused():
    """Shapes that differ, non-finite logits and an unknown rule are errors."""
    with pytest.raises(ValueError, match='both be'):
        T.tune_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match='NaN'):
        T.tune_thresholds(np.full((2, 1), np.nan), np.ones((2, 1)))
    with pytest.raises(InputError, match='unknown threshold rule'):
        T.tune_thresholds(np.zeros((2, 1)), np.ones((2, 1)), rule='youden')


def test_split_fingerprints_follow_the_images_not_the_folder(tmp_path):
    """The same images under a moved root have the same fingerprint; another split's images do not; an unknown
    tuning split is never "the same"."""
    a = T.split_fingerprint([str(tmp_path / 'd' / 'images' / 'val' / f'{i}.jpg') for i in range(3)],
                            str(tmp_path / 'd'), 'csv', 'val')
    moved = T.split_fingerprint([f'/elsewhere/images/val/{i}.jpg' for i in (2, 0, 1)], '/elsewhere', 'csv', 'val')
    other = T.split_fingerprint([str(tmp_path / 'd' / 'images' / 'test' / f'{i}.jpg') for i in range(3)],
                                str(tmp_path / 'd'), 'csv', 'test')
    assert a['num_images'] == 3 and T.same_split(a, moved) and not T.same_split(a, other)
    assert not T.same_split(None, a) and not T.same_split(a, {})


def test_json_round_trip_and_field_errors(tmp_path):
    """to_json/from_json round-trip; a value outside (0, 1), a non-number, a count other than the classes' and a
    non-object info are errors naming the file and the field; read_thresholds_file refuses files without
    thresholds and thresholds of other classes."""
    th = T.LabelThresholds((0.2, 0.7), {'rule': 'f1', 'tuned_on': {'split': 'val'}})
    assert T.LabelThresholds.from_json(th.to_json(), 'x') == th
    assert T.LabelThresholds.from_json({}, 'x') is None
    for bad, match in (([0.2, 1.0], 'strictly between 0 and 1'), (['a', 0.5], 'strictly between'),
                       ([0.5], '1 thresholds for 2 classes')):
        with pytest.raises(InputError, match=match) as e:
            T.LabelThresholds.from_json({'label_thresholds': bad}, 'cfg.json', num_classes=2)
        assert 'cfg.json' in str(e.value)
    with pytest.raises(InputError, match='label_thresholds_info" must be a JSON object'):
        T.LabelThresholds.from_json({'label_thresholds': [0.5], 'label_thresholds_info': [1]}, 'cfg.json')
    path = tmp_path / 'th.json'
    path.write_text(json.dumps(dict(th.to_json(), label_names=['x', 'y'])))
    assert T.read_thresholds_file(str(path), 2, ['x', 'y']) == th
    with pytest.raises(InputError, match='not the model'):
        T.read_thresholds_file(str(path), 2, ['y', 'x'])
    with pytest.raises(InputError, match='2 thresholds for 3 classes'):
        T.read_thresholds_file(str(path), 3)
    path.write_text('{"label_names": ["x"]}')
    with pytest.raises(InputError, match='holds no "label_thresholds"'):
        T.read_thresholds_file(str(path))
    path.write_text('{oops')
    with pytest.raises(InputError, match='not valid JSON'):
        T.read_thresholds_file(str(path))
    with pytest.raises(InputError, match='not found'):
        T.read_thresholds_file(str(tmp_path / 'missing.json'))


def test_the_store_on_a_model_and_through_create_model():
    """store_label_thresholds / model_label_thresholds are the one writer and reader; thresholds for another class
    count are not kept; timm.create_model(label_thresholds=...) stores them on an SRDL (not in its pretrained_cfg,
    which timm's save_for_hf copies into config.json) and reset-free fine-tuning to other classes drops them."""
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16),
                              label_thresholds=[0.2, 0.3, 0.4])
    got = T.model_label_thresholds(model)
    assert got.values == (0.2, 0.3, 0.4) and got.info == {'rule': 'given'}
    assert 'label_thresholds' not in model.pretrained_cfg
    assert T.store_label_thresholds(model, [0.5, 0.5]) is None and T.model_label_thresholds(model) is None
    tuned = T.LabelThresholds((0.1, 0.2, 0.3), {'rule': 'f1'})
    assert T.store_label_thresholds(model, tuned) is tuned and T.model_label_thresholds(model) is tuned
    model.label_thresholds = T.LabelThresholds((0.1, 0.2), {})  # written around the store: ignored when it misfits
    assert T.model_label_thresholds(model) is None
    other = timm.create_model('srdl_test_resnet', num_classes=2, label_embeddings=torch.randn(2, 16),
                              label_thresholds=[0.2, 0.3, 0.4])
    assert T.model_label_thresholds(other) is None
    with pytest.raises(InputError, match='strictly between 0 and 1'):
        timm.create_model('srdl_test_resnet', num_classes=1, label_embeddings=torch.randn(1, 16),
                          label_thresholds=[1.5])
