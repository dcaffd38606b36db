"""Tests for srdl_timm/layers/oe.py (paper §3.3, eqs. 7-10): the vectorised region picker against a plain
Python loop written straight from the text."""
import pytest
import torch

from srdl_timm.layers import ObjectErasing, erase_region, peak_interval


def _loop_interval(values, alpha):
    """Above-threshold interval holding the global max; widest among several maxima; first among equals."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [True] * len(values)
    norm = [(v - lo) / (hi - lo) for v in values]
    runs, start = [], None
    for i, v in enumerate(norm + [-1.0]):
        if v >= alpha and start is None:
            start = i
        elif v < alpha and start is not None:
            runs.append((start, i))
            start = None
    best = None
    for s, e in runs:
        if any(values[i] == hi for i in range(s, e)):
            if best is None or (e - s) > (best[1] - best[0]):
                best = (s, e)
    return [best[0] <= i < best[1] for i in range(len(values))]


def _loop_runs(values, alpha):
    """(start, end) of every run of min-max normalised values >= alpha (a flat axis is one run)."""
    lo, hi = min(values), max(values)
    norm = [1.0] * len(values) if hi == lo else [(v - lo) / (hi - lo) for v in values]
    runs, start = [], None
    for i, v in enumerate(norm + [-1.0]):
        if v >= alpha and start is None:
            start = i
        elif v < alpha and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _loop_region(sa, alpha):
    """Eqs. 7-10: rows x columns of the run holding a global maximum; among tied maxima, the one whose
    rectangle (row run x column run) is largest, the first in row-major order among equal ones."""
    h, w = len(sa), len(sa[0])
    top = max(max(r) for r in sa)
    if top == min(min(r) for r in sa):
        return [[False] * w for _ in range(h)]
    m_x = [max(sa[y][x] for y in range(h)) for x in range(w)]  # eq. 7
    m_y = [max(sa[y][x] for x in range(w)) for y in range(h)]  # eq. 8
    col_runs, row_runs = _loop_runs(m_x, alpha), _loop_runs(m_y, alpha)
    run_of = lambda runs, i: next(r for r in runs if r[0] <= i < r[1])  # noqa: E731
    best = None
    for y in range(h):
        for x in range(w):
            if sa[y][x] == top:
                (r0, r1), (c0, c1) = run_of(row_runs, y), run_of(col_runs, x)
                if best is None or (r1 - r0) * (c1 - c0) > best[0]:
                    best = ((r1 - r0) * (c1 - c0), r0, r1, c0, c1)
    _, r0, r1, c0, c1 = best
    return [[r0 <= y < r1 and c0 <= x < c1 for x in range(w)] for y in range(h)]


def _check(maps, alpha):
    got = erase_region(maps, alpha)
    flat_maps = maps.reshape(-1, *maps.shape[-2:])
    for i, m in enumerate(got.reshape(-1, *maps.shape[-2:])):
        assert m.tolist() == _loop_region(flat_maps[i].tolist(), alpha), f'map {i}: {flat_maps[i]}'


@pytest.mark.parametrize('shape', [(4, 3, 7, 5), (2, 1, 14, 14), (3, 2, 1, 9), (3, 2, 6, 1)])
@pytest.mark.parametrize('alpha', [0.3, 0.5, 0.8])
def test_random_maps_match_loop_reference(shape, alpha):
    """Random continuous maps, including non-square and single-row/column maps."""
    torch.manual_seed(1)
    _check(torch.rand(shape), alpha)


def test_quantised_maps_with_ties_match_loop_reference():
    """Maps with many equal values (several global maxima, ties in width) pick as the loop does, and every erased
    rectangle contains a maximum of its map."""
    torch.manual_seed(2)
    maps = (torch.rand(64, 6, 8) * 4).floor() / 4
    _check(maps, 0.5)
    region = erase_region(maps, 0.5)
    for m, r in zip(maps, region):
        if r.any():
            assert (m[r] == m.max()).any()


def test_two_tied_peaks_of_equal_rectangles_erase_around_the_first():
    """Two equal peaks A = (0, 4) and B = (3, 0), each spanning a 2-cell rectangle (A: row 0 x cols 3-4; B: rows 2-3
    x col 0). Picking each axis on its own marginal would erase rows 2-3 x cols 3-4, holding neither peak; with
    equal rectangles the first peak in row-major order (A) is erased."""
    sa = torch.zeros(4, 5)
    sa[0, 4] = sa[3, 0] = 1.0
    sa[0, 3] = 0.9  # widens A's column run
    sa[2, 0] = 0.9  # widens B's row run
    cols, rows = peak_interval(sa.amax(0), 0.5), peak_interval(sa.amax(1), 0.5)
    assert cols.tolist() == [False, False, False, True, True] and rows.tolist() == [False, False, True, True]
    assert not (sa[rows][:, cols] == 1.0).any()  # the per-axis choice misses both peaks
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0, 3:] = True
    assert torch.equal(erase_region(sa, 0.5), expected)


def test_tied_peaks_of_different_width_erase_the_widest():
    """The paper's "widest interval for multiple global maximum peaks": of two equal maxima, the one in the wider
    above-threshold region is erased, although it comes second in row-major order. A = (0, 0) alone (1 cell);
    B = (3, 3) with its neighbours at 0.9 spans rows 2-4 x cols 2-4."""
    sa = torch.zeros(5, 5)
    sa[0, 0] = 1.0
    sa[2:5, 2:5] = 0.9
    sa[3, 3] = 1.0
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[2:5, 2:5] = True
    assert torch.equal(erase_region(sa, 0.5), expected)
    # and reversed in row-major order, the wide one still wins
    assert torch.equal(erase_region(sa.flip(0, 1), 0.5), expected.flip(0, 1))


def test_widest_interval_wins_among_global_maxima():
    """Two global peaks: the one in the wider above-threshold interval is chosen."""
    marginal = torch.tensor([1.0, 0.0, 0.9, 1.0, 0.8, 0.0, 0.2])
    assert peak_interval(marginal, 0.5).tolist() == [False, False, True, True, True, False, False]


def test_peak_interval_not_widest_interval():
    """A wide interval without the global max loses to the narrow one that holds it."""
    marginal = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.0, 1.0, 0.0])
    assert peak_interval(marginal, 0.5).tolist() == [False] * 5 + [True, False]


def test_flat_and_one_by_one_maps_erase_nothing():
    """max == min (every 1x1 map is flat) erases nothing."""
    assert not erase_region(torch.full((2, 3, 4, 4), 0.7), 0.5).any()
    assert not erase_region(torch.rand(5, 2, 1, 1), 0.5).any()


def test_all_above_threshold_erases_whole_axis():
    """After min-max normalisation only a marginal's minimum falls below alpha; a flat marginal (every row
    peaks equally) is entirely above it, so the region spans that whole axis."""
    maps = torch.tensor([[[1.0, 0.9, 0.2, 0.95], [1.0, 0.2, 0.1, 0.3], [0.4, 0.3, 0.2, 1.0]]])
    region = erase_region(maps, 0.05)
    # maxima (0, 0), (1, 0), (2, 3); rows are flat (one run, 3 wide); columns: runs 0-1 and 3, so the peaks
    # in column 0 span 3 x 2 cells and win over (2, 3)'s 3 x 1
    assert region.tolist() == [[[True, True, False, False]] * 3]


def test_region_is_a_rectangle():
    """The erased set is the product of one row interval and one column interval."""
    torch.manual_seed(3)
    for m in erase_region(torch.rand(50, 9, 7), 0.5):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(ys):
            assert m[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
            assert m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def test_object_erasing_selects_topk_by_prediction_and_keeps_gradient():
    """Top-K categories by detached score are erased; the mask has no gradient, the kept SA does."""
    torch.manual_seed(4)
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 0.0, 4.0, -2.0]], requires_grad=True)
    sa = torch.rand(2, 4, 12, requires_grad=True)
    index, erased, _ = ObjectErasing(topk=2, alpha=0.5)(logits, sa, 3, 4)
    assert index.tolist() == [[1, 3], [0, 2]]
    for n in range(2):
        for k in range(2):
            mask = erase_region(sa[n, index[n, k]].detach().view(3, 4), 0.5).flatten()
            assert mask.any()
            assert torch.equal(erased[n, k], sa[n, index[n, k]].masked_fill(mask, 0.0))
    erased.sum().backward()
    assert logits.grad is None
    kept = sa.grad[0, 1] != 0
    assert kept.any() and not kept.all()


def test_topk_larger_than_num_classes_is_clamped():
    """K > C erases every category once instead of failing."""
    index, erased, _ = ObjectErasing(topk=5)(torch.randn(2, 3), torch.rand(2, 3, 4), 2, 2)
    assert index.shape == (2, 3) and erased.shape == (2, 3, 4)


def test_region_picker_has_no_host_sync():
    """erase_region compiles as one graph (fullgraph=True): no .item(), no data-dependent Python branch."""
    compiled = torch.compile(erase_region, fullgraph=True, backend='eager', dynamic=False)
    maps = torch.rand(3, 2, 5, 6)
    assert torch.equal(compiled(maps, 0.5), erase_region(maps, 0.5))


@pytest.mark.parametrize('kwargs', [dict(topk=0), dict(alpha=0.0), dict(alpha=1.0)])
def test_bad_hyper_parameters_raise(kwargs):
    """K < 1 or alpha outside (0, 1) raises ValueError naming oe_topk / oe_alpha."""
    with pytest.raises(ValueError, match='oe_'):
        ObjectErasing(**kwargs)
