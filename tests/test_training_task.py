"""Tests for srdl_timm/training/task.py: timm 1.0's task API trains SRDL with OE (what srdl-train runs on)."""
import warnings

import pytest
import torch
import timm
from timm.task import MultiLabelClassificationTask

import srdl_timm  # noqa: F401
from srdl_timm.loss import SRDLLoss
from srdl_timm.training import SRDLTask


def _model():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return timm.create_model('srdl_test_resnet', num_classes=4)


def test_task_is_a_timm_multilabel_task_with_oe():
    """SRDLTask subclasses timm's multi-label task, switches OE on, returns the original logits as 'output' and
    the loss terms: loss = loss_ori + loss_era, where loss_ori is the criterion on the original logits alone."""
    torch.manual_seed(0)
    model = _model()
    task = SRDLTask(model, verbose=False)
    assert isinstance(task, MultiLabelClassificationTask)
    assert model.object_erasing
    task.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 4)).float()
    out = task(x, y)
    assert set(out) == {'loss', 'output', 'loss_ori', 'loss_era'} and out['output'].shape == (2, 4)
    assert out['loss'].requires_grad and not out['loss_ori'].requires_grad
    assert torch.allclose(out['loss_ori'], SRDLLoss()(out['output'].detach(), y))
    assert torch.allclose(out['loss'].detach(), out['loss_ori'] + out['loss_era'])
    assert out['loss_era'] > 0  # the erased branch contributes
    logits, erased = model(x)  # the task's model trains with OE
    assert logits.shape == erased.shape


def test_the_given_loss_is_the_one_used():
    """SRDLTask(model, loss=...) trains with exactly that SRDLLoss instance (no second copy of the loss)."""
    calls = []

    class CountingLoss(SRDLLoss):
        def forward(self, output, target):
            calls.append(isinstance(output, (tuple, list)))
            return super().forward(output, target)

    loss = CountingLoss()
    task = SRDLTask(_model(), loss=loss, verbose=False)
    assert task.loss is loss and task.criterion is loss
    task.train()
    task(torch.randn(2, 3, 64, 64), torch.ones(2, 4))
    assert calls == [True, False]  # eq. 13 on (logits, erased) for the gradient, eq. 11 alone for the log


def test_task_training_reduces_loss():
    """A few Adam steps with the task on a fixed batch reduce L_ori + L_era."""
    torch.manual_seed(0)
    task = SRDLTask(_model(), verbose=False)
    task.train()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 4)).float()
    opt = torch.optim.Adam(task.trainable_module.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = task(x, y)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_ema_is_timms_and_follows_the_model():
    """task.setup_ema gives timm's ModelEmaV3; after one step, update_ema sets every EMA weight to
    decay * old + (1 - decay) * new (decay 0.5 at step 2, no warmup)."""
    torch.manual_seed(0)
    task = SRDLTask(_model(), verbose=False)
    ema = task.setup_ema(decay=0.5)
    assert isinstance(ema, timm.utils.ModelEmaV3) and task.has_ema()
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    task.train()
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.1)
    task(torch.randn(2, 3, 64, 64), torch.ones(2, 4))['loss'].backward()
    opt.step()
    task.update_ema(step=2)  # timm: decay 0 (a copy) at step 1, the set decay from step 2 on
    now = task.trainable_module.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.5 * before[k] + 0.5 * now[k], atol=1e-6), k
    assert any(not torch.equal(before[k], v) for k, v in ema.module.state_dict().items())


def test_evaluator_and_eval_forward():
    """In eval mode the task returns plain logits and timm's multi-label evaluator is used."""
    task = SRDLTask(_model(), verbose=False)
    task.eval()
    with torch.no_grad():
        out = task(torch.randn(2, 3, 64, 64), torch.zeros(2, 4))
    assert out['output'].shape == (2, 4) and 'loss_era' not in out
    assert type(task.create_evaluator()).__name__ == 'MultiLabelClassificationEvaluator'


def test_baselines_train_without_oe_and_bad_input_is_refused():
    """A plain timm classifier trains as a multi-label baseline with object_erasing=False (same masked BCE); asking
    it for object erasing raises TypeError; integer class-index targets raise ValueError."""
    baseline = timm.create_model('resnet10t', num_classes=4)
    task = SRDLTask(baseline, object_erasing=False, verbose=False)
    task.train()
    y = torch.tensor([[1., 0., -1., 0.], [0., 1., 1., 0.]])  # -1: ignored entry
    out = task(torch.randn(2, 3, 64, 64), y)
    assert set(out) == {'loss', 'output', 'loss_ori'} and torch.isfinite(out['loss'])
    with pytest.raises(TypeError, match='SRDL'):
        SRDLTask(timm.create_model('resnet10t', num_classes=4), verbose=False)
    task = SRDLTask(_model(), verbose=False)
    with pytest.raises(ValueError, match='dense floating-point'):
        task(torch.randn(2, 3, 64, 64), torch.tensor([1, 2]))
