"""Tests of srdl_timm/metrics.py: AP in both definitions, eqs. 14–16, ties, ignore, streaming.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_metrics.py
"""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from srdl_timm.metrics import MultiLabelMetrics, average_precision, precision_recall_f1


def _voc_devkit_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Independent all-point interpolated AP, transcribed from the VOC2010+ devkit's VOCap (per-sample ranks)."""
    order = np.argsort(-scores, kind='stable')
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] != 1)
    rec = tp / max(1, (labels == 1).sum())
    prec = tp / (tp + fp)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def _tie_free(rng, n, c):
    scores = rng.permutation(n * c).reshape(n, c).astype(np.float64) / (n * c) - 0.5
    targets = (rng.random((n, c)) < 0.3).astype(np.float64)
    targets[0] = 1.0  # every class has a positive
    return scores, targets


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_non_interpolated_ap_matches_sklearn_on_tie_free_data(seed):
    """Non-interpolated AP equals sklearn's average_precision_score for every class when scores have no ties."""
    rng = np.random.default_rng(seed)
    scores, targets = _tie_free(rng, 60, 5)
    ours = average_precision(scores, targets, mode='non_interpolated')
    ref = [average_precision_score(targets[:, c], scores[:, c]) for c in range(5)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('seed', [0, 1])
def test_interpolated_ap_matches_voc_devkit_and_bounds_non_interpolated(seed):
    """All-point interpolated AP equals the VOC devkit's VOCap on tie-free data and is >= non-interpolated AP."""
    rng = np.random.default_rng(seed)
    scores, targets = _tie_free(rng, 50, 4)
    interp = average_precision(scores, targets, mode='interpolated')
    non = average_precision(scores, targets, mode='non_interpolated')
    ref = [_voc_devkit_ap(scores[:, c], targets[:, c]) for c in range(4)]
    np.testing.assert_allclose(interp, ref, rtol=0, atol=1e-12)
    assert np.all(interp >= non - 1e-12) and np.any(interp > non + 1e-6)


def test_hand_worked_interpolation_case():
    """Ranking [+, -, -, +, +]: non-interpolated (1 + 2/4 + 3/5)/3 = 0.7; interpolated (1 + 0.6 + 0.6)/3."""
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    labels = np.array([1, 0, 0, 1, 1])
    assert average_precision(scores, labels, 'non_interpolated')[0] == pytest.approx(0.7, abs=1e-12)
    assert average_precision(scores, labels, 'interpolated')[0] == pytest.approx(2.2 / 3, abs=1e-12)


def test_ties_form_one_threshold_and_are_order_independent():
    """Tied scores count as one threshold: scores [.9, .5, .5, .1] labels [0, 1, 0, 1] give non-interpolated
    0.5·(1/3) + 0.5·(1/2) = 5/12 (= sklearn) and interpolated 0.5·0.5 + 0.5·0.5 = 0.5, in any sample order."""
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    labels = np.array([0, 1, 0, 1])
    for perm in ([0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]):
        s, y = scores[perm], labels[perm]
        assert average_precision(s, y, 'non_interpolated')[0] == pytest.approx(5 / 12, abs=1e-12)
        assert average_precision(s, y, 'interpolated')[0] == pytest.approx(0.5, abs=1e-12)
        assert average_precision_score(y, s) == pytest.approx(5 / 12, abs=1e-12)


def test_ignore_entries_are_removed_from_the_ranking():
    """Targets -1 (and an explicit ignore mask) drop the entry: AP equals AP computed on the remaining samples."""
    rng = np.random.default_rng(3)
    scores, targets = _tie_free(rng, 40, 3)
    ignore = rng.random((40, 3)) < 0.25
    ignore[0] = False
    t = targets.copy()
    t[ignore] = -1
    a = average_precision(scores, t, 'non_interpolated')
    b = average_precision(scores, targets, 'non_interpolated', ignore=ignore)
    for c in range(3):
        keep = ~ignore[:, c]
        ref = average_precision_score(targets[keep, c], scores[keep, c])
        assert a[c] == pytest.approx(ref, abs=1e-12) and b[c] == pytest.approx(ref, abs=1e-12)
    # an ignored high-scoring negative must not lower AP
    s = np.array([3.0, 2.0, 1.0])
    assert average_precision(s, np.array([-1, 1, 0]), 'non_interpolated')[0] == 1.0
    assert average_precision(s, np.array([0, 1, 0]), 'non_interpolated')[0] == 0.5


def test_class_without_positive_is_nan_and_left_out_of_map():
    """A class with no positive gets AP NaN; mAP and CP/CR average over the other classes only."""
    logits = torch.tensor([[2.0, 1.0], [-1.0, 0.5], [0.3, -2.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    ap = average_precision(logits, targets, 'interpolated')
    assert ap[0] == 1.0 and math.isnan(ap[1])
    m = MultiLabelMetrics(num_classes=2)
    m.update(logits, targets)
    r = m.compute()
    assert r['mAP_interpolated'] == pytest.approx(100.0) and r['num_classes_evaluated'] == 1
    assert r['CR'] == pytest.approx(100.0)


def test_precision_recall_f1_hand_worked():
    """Eqs. 14–16 on a 4×3 case worked by hand (class 2 predicts nothing → its precision counts as 0)."""
    pred = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    tgt = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=np.float64)
    # class 0: Np=3 Nc=2 Ng=2; class 1: Np=2 Nc=1 Ng=2; class 2: Np=0 Nc=0 Ng=1
    r = precision_recall_f1(pred, tgt)
    cp, cr = (2 / 3 + 1 / 2 + 0) / 3, (1 + 1 / 2 + 0) / 3
    op, orc = 3 / 5, 3 / 5
    assert r['CP'] == pytest.approx(cp) and r['CR'] == pytest.approx(cr)
    assert r['CF1'] == pytest.approx(2 * cp * cr / (cp + cr))
    assert r['OP'] == pytest.approx(op) and r['OR'] == pytest.approx(orc) and r['OF1'] == pytest.approx(0.6)


def test_precision_recall_match_sklearn_macro_and_micro():
    """CP/CR are sklearn's macro precision/recall (zero_division=0) and OP/OR the micro ones."""
    rng = np.random.default_rng(5)
    tgt = (rng.random((80, 6)) < 0.3).astype(int)
    tgt[0] = 1
    pred = rng.random((80, 6)) < 0.35
    r = precision_recall_f1(pred, tgt)
    assert r['CP'] == pytest.approx(precision_score(tgt, pred, average='macro', zero_division=0))
    assert r['CR'] == pytest.approx(recall_score(tgt, pred, average='macro', zero_division=0))
    assert r['OP'] == pytest.approx(precision_score(tgt, pred, average='micro'))
    assert r['OR'] == pytest.approx(recall_score(tgt, pred, average='micro'))


def test_threshold_and_top3_predictions():
    """Threshold 0.5 ⇔ logit >= 0; top-3 keeps the 3 best classes that also pass the threshold (ML-GCN), or all
    3 with topk_requires_threshold=False."""
    logits = torch.tensor([[3.0, 2.0, -1.0, 1.0, 0.0], [-3.0, -2.0, -1.0, -0.5, -4.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    m = MultiLabelMetrics(num_classes=5)
    m.update(logits, targets)
    r = m.compute()
    # threshold: row 0 predicts {0,1,3,4}; row 1 nothing. Nc=2 (0,3), Np=4, Ng=4
    assert r['OP'] == pytest.approx(50.0) and r['OR'] == pytest.approx(50.0)
    # top-3 & threshold: row 0 {0,1,3}; row 1 nothing → Nc=2, Np=3
    assert r['OP_top3'] == pytest.approx(200 / 3) and r['OR_top3'] == pytest.approx(50.0)
    m2 = MultiLabelMetrics(num_classes=5, topk_requires_threshold=False)
    m2.update(logits, targets)
    r2 = m2.compute()
    # plain top-3: row 0 {0,1,3}, row 1 {3,2,1} → Nc = 2 + 1 = 3, Np = 6
    assert r2['OP_top3'] == pytest.approx(50.0) and r2['OR_top3'] == pytest.approx(75.0)


def test_per_class_thresholds_cut_each_class_at_its_own_value():
    """A threshold per class predicts sigmoid(logit_c) >= t_c (CP … OF1 and the top-3 variants follow those
    predictions); a global value equal for every class gives the global result; a count other than the classes' is
    an error."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 4))
    targets = (rng.random((40, 4)) < 0.4).astype(np.float32)
    t = [0.2, 0.5, 0.7, 0.9]
    r = MultiLabelMetrics(num_classes=4, threshold=t).compute_from(logits, targets)
    expected = precision_recall_f1(1 / (1 + np.exp(-logits)) >= np.array(t), targets)
    for k, v in expected.items():
        assert r[k] == pytest.approx(v * 100), k
    assert r['threshold'] == t
    same = MultiLabelMetrics(num_classes=4, threshold=[0.5] * 4).compute_from(logits, targets)
    plain = MultiLabelMetrics(num_classes=4).compute_from(logits, targets)
    assert all(same[k] == plain[k] for k in ('CF1', 'OF1', 'CF1_top3', 'OF1_top3'))
    with pytest.raises(ValueError, match='3 thresholds for 4 classes'):
        MultiLabelMetrics(num_classes=4, threshold=[0.5] * 3)
    with pytest.raises(ValueError, match='3 thresholds for 4 classes'):
        MultiLabelMetrics(threshold=[0.5] * 3).compute_from(logits, targets)
    with pytest.raises(ValueError, match='threshold'):
        MultiLabelMetrics(threshold=[0.5, 1.0])


def test_streaming_equals_single_batch_and_reset():
    """Accumulating over uneven batches gives exactly the one-batch result; reset() empties the state; all keys
    are present and named."""
    rng = np.random.default_rng(7)
    logits = torch.from_numpy(rng.normal(size=(37, 4)).astype(np.float32))
    targets = torch.from_numpy((rng.random((37, 4)) < 0.4).astype(np.float32))
    targets[3, 1] = -1
    whole = MultiLabelMetrics(label_names=list('abcd'))
    whole.update(logits, targets)
    r1 = whole.compute()
    parts = MultiLabelMetrics(label_names=list('abcd'))
    for s in (slice(0, 5), slice(5, 6), slice(6, 30), slice(30, 37)):
        parts.update(logits[s], targets[s])
    r2 = parts.compute()
    for k in ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1',
              'CP_top3', 'CR_top3', 'CF1_top3', 'OP_top3', 'OR_top3', 'OF1_top3'):
        assert r1[k] == r2[k], k
    np.testing.assert_array_equal(r1['AP_interpolated'], r2['AP_interpolated'])
    assert r1['num_samples'] == 37 and r1['num_ignored_entries'] == 1
    ref = np.nanmean([average_precision_score(targets[targets[:, c] != -1, c], logits[targets[:, c] != -1, c])
                      for c in range(4)]) * 100
    assert r1['mAP_non_interpolated'] == pytest.approx(ref, abs=1e-9)
    parts.reset()
    assert parts.num_samples == 0
    with pytest.raises(ValueError, match='no samples'):
        parts.compute()


def test_logits_are_stored_as_float32():
    """update() accepts any float dtype but accumulates float32 on the CPU."""
    m = MultiLabelMetrics(num_classes=2)
    m.update(torch.tensor([[0.1, -0.2]], dtype=torch.float64), torch.tensor([[1.0, 0.0]]))
    logits, _ = m.gather()
    assert logits.dtype == torch.float32 and logits.device.type == 'cpu'


def test_all_ignored_rows_are_counted():
    """Rows whose targets are all -1 (skipped unreadable images) are counted and contribute nothing."""
    m = MultiLabelMetrics(num_classes=2)
    m.update(torch.tensor([[1.0, -1.0], [5.0, 5.0]]), torch.tensor([[1.0, 0.0], [-1.0, -1.0]]))
    r = m.compute()
    assert r['num_samples_all_ignored'] == 1 and r['OP'] == pytest.approx(100.0)


@pytest.mark.parametrize('logits,targets,match', [
    (torch.tensor([[float('nan'), 0.0]]), torch.tensor([[1.0, 0.0]]), 'NaN'),
    (torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 'targets must be'),
    (torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), r'\[B, C\]'),
    (torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]]), 'expected 2'),
])
def test_bad_updates_raise(logits, targets, match):
    """NaN logits, target values outside {1, 0, -1}, shape mismatches and a wrong class count raise ValueError."""
    m = MultiLabelMetrics(num_classes=2)
    with pytest.raises(ValueError, match=match):
        m.update(logits, targets)


def test_bad_arguments_raise():
    """Unknown AP mode, a threshold outside (0, 1) and bad targets to average_precision raise ValueError."""
    with pytest.raises(ValueError, match='AP mode'):
        average_precision(np.zeros(3), np.ones(3), mode='11point')
    with pytest.raises(ValueError, match='threshold'):
        MultiLabelMetrics(threshold=1.0)
    with pytest.raises(ValueError, match='targets must be'):
        average_precision(np.zeros(3), np.array([1, 0, 3]))
