"""Tests for srdl_timm/ops/common.py: the chunked path's block plan and the one-time-work thread."""
import pytest
import torch

from ops_cases import one_thread  # noqa: F401  (fixture)
from srdl_timm.ops.common import one_time_work, plan_blocks


def test_block_plan_respects_budget():
    """plan_blocks's blocks never exceed the element budget (beyond one row) and cover the ranges evenly."""
    for classes, rows, cols, budget in [(80, 196, 2048, 1 << 18), (1000, 49, 2048, 1 << 18), (3, 5, 7, 1),
                                        (1, 1, 1, 10), (7, 13, 3, 100)]:
        step_c, step_r = plan_blocks(classes, rows, cols, budget)
        assert 1 <= step_c <= classes and 1 <= step_r <= rows
        assert step_c * step_r * cols <= max(budget, cols)
        assert step_r == rows or step_c == 1


def test_one_time_work_runs_in_its_own_thread_with_the_callers_state():
    """one_time_work runs its function in another thread (its own malloc arena) with the caller's thread count,
    grad mode and inference mode, returns its result, re-raises its exception in the caller, and runs nested
    calls inline."""
    import threading
    caller = threading.get_ident()

    def probe():
        nested = one_time_work(threading.get_ident)
        return (threading.get_ident(), nested, torch.get_num_threads(), torch.is_grad_enabled(),
                torch.is_inference_mode_enabled())

    torch.set_num_threads(2)
    try:
        for grad, inference in ((True, False), (False, False), (False, True)):
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                ident, nested, threads, g, i = one_time_work(probe)
            assert ident != caller and nested == ident and (threads, g, i) == (2, grad, inference)
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match='from the worker'):
        one_time_work(lambda: (_ for _ in ()).throw(ValueError('from the worker')))
