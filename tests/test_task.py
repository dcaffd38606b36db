"""Tests for srdl_timm/task.py: timm 1.0's task API trains SRDL with OE."""
import warnings

import pytest
import torch
import timm
from timm.task import MultiLabelClassificationTask

import srdl_timm  # noqa: F401
from srdl_timm.task import SRDLTask


def _model():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return timm.create_model('srdl_test_resnet', num_classes=4)


def test_task_is_a_timm_multilabel_task_with_oe():
    """SRDLTask subclasses timm's multi-label task, switches OE on and returns logits as 'output'."""
    model = _model()
    task = SRDLTask(model, verbose=False)
    assert isinstance(task, MultiLabelClassificationTask)
    assert model.object_erasing
    task.train()
    out = task(torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 4)).float())
    assert set(out) == {'loss', 'output'} and out['output'].shape == (2, 4)
    logits, erased = model(torch.randn(2, 3, 64, 64))  # the task's model trains with OE
    assert logits.shape == erased.shape


def test_task_training_reduces_loss():
    """A few Adam steps with the task on a fixed batch reduce L_ori + L_era."""
    torch.manual_seed(0)
    task = SRDLTask(_model(), verbose=False)
    task.train()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 4)).float()
    opt = torch.optim.Adam(task.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = task(x, y)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_evaluator_and_eval_forward():
    """In eval mode the task returns plain logits and timm's multi-label evaluator is used."""
    task = SRDLTask(_model(), verbose=False)
    task.eval()
    with torch.no_grad():
        out = task(torch.randn(2, 3, 64, 64), torch.zeros(2, 4))
    assert out['output'].shape == (2, 4)
    assert type(task.create_evaluator()).__name__ == 'MultiLabelClassificationEvaluator'


def test_rejects_non_srdl_models_and_bad_targets():
    """A model without OE support raises TypeError; integer class-index targets raise ValueError."""
    with pytest.raises(TypeError, match='SRDL'):
        SRDLTask(timm.create_model('resnet10t', num_classes=4), verbose=False)
    task = SRDLTask(_model(), verbose=False)
    with pytest.raises(ValueError, match='dense floating-point'):
        task(torch.randn(2, 3, 64, 64), torch.tensor([1, 2]))
