"""srdl_timm.layers.depthwise: the faster depthwise backward gives PyTorch's gradients, in place of timm's layers."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame

from srdl_timm.layers.depthwise import (
    DepthwiseConv2d, DepthwiseConv2dSame, convert_depthwise, depthwise_conv2d, restore_depthwise)

# (channels, size, kernel, stride, padding, dilation): stride 1 and 2, dilation 1 and 2, odd sizes, no padding
CASES = [(6, 9, 3, 1, 1, 1), (5, 8, 5, 1, 2, 1), (4, 10, 5, 1, 4, 2), (4, 10, 3, 1, 2, 2), (6, 11, 3, 2, 1, 1),
         (3, 9, 5, 2, 0, 1), (4, 7, 3, 1, 0, 1), (4, 8, 3, 1, 3, 1)]


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('case', CASES)
def test_gradients_equal_pytorch_conv2d_in_float64(case, channels_last):
    """Output and input/weight/bias gradients equal F.conv2d's under autograd (float64, 1e-12), any stride,
    dilation and padding (including padding larger and smaller than the kernel's reach), either memory format."""
    c, size, k, stride, pad, dil = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, size, size, dtype=torch.float64, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, dtype=torch.float64, generator=gen)
    b = torch.randn(c, dtype=torch.float64, generator=gen)
    inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    out = depthwise_conv2d(*inputs, (stride, stride), (pad, pad), (dil, dil))
    ref = F.conv2d(*ref_inputs, stride, pad, dil, c)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    out.backward(grad)
    ref.backward(grad)
    for mine, theirs in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-12, atol=1e-12)


def test_autocast_runs_bfloat16_and_returns_float32_gradients():
    """Under bfloat16 autocast the convolution runs in bfloat16 (as PyTorch's would) and the parameter gradient is
    float32, within bfloat16 rounding of the float32 gradient (relative 2e-2 of its largest value)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 12, 12, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 5, 5, generator=gen, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = depthwise_conv2d(x, w, None, (1, 1), (4, 4), (2, 2))
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    w_ref = w.detach().clone().requires_grad_()
    F.conv2d(x, w_ref, None, 1, 4, 2, 8).square().sum().backward()
    assert w.grad.dtype == torch.float32
    scale = w_ref.grad.abs().max()
    assert (w.grad - w_ref.grad).abs().max() / scale < 2e-2


def test_bad_weight_is_refused_by_shape():
    """A weight that is not [C, 1, kh, kw] for the input's C is refused, naming both shapes."""
    with pytest.raises(ValueError, match=r'\[C, 1, kh, kw\] weight for 4 input channels, got \(4, 2, 3, 3\)'):
        depthwise_conv2d(torch.zeros(1, 4, 5, 5), torch.zeros(4, 2, 3, 3))


def test_convert_keeps_parameters_and_training_step_of_a_timm_cnn():
    """Swapping a timm CNN with 'SAME' padding and dilation (tf_efficientnet_lite0 at output stride 16) keeps every
    parameter object and state-dict key, gives the same loss and parameter gradients as PyTorch's layers (float64,
    1e-10 of the largest gradient), and restore_depthwise makes the classes plain again."""
    torch.manual_seed(0)
    model = timm.create_model('tf_efficientnet_lite0', num_classes=3, output_stride=16).train().double()
    swapped_kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert Conv2dSame in swapped_kinds  # the stride-2 depthwise layers: dynamic 'SAME' padding
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(x).square().sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = loss_and_grads()
    count = convert_depthwise(model)
    assert count == sum(1 for m in model.modules() if isinstance(m, (DepthwiseConv2d, DepthwiseConv2dSame)))
    assert count == 16
    assert dict(model.named_parameters()) == params and list(model.state_dict()) == keys
    loss, grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    scale = max(g.abs().max() for g in ref_grads.values())  # some gradients are exactly 0 up to rounding
    for name, grad in grads.items():
        assert (grad - ref_grads[name]).abs().max() / scale < 1e-10, name
    assert restore_depthwise(model) == count
    assert not any(isinstance(m, (DepthwiseConv2d, DepthwiseConv2dSame)) for m in model.modules())


def test_convert_leaves_grouped_and_plain_convolutions():
    """Only depthwise convolutions (groups == in == out channels) are swapped; grouped and dense ones stay."""
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.Conv2d(4, 8, 3, groups=2),
                                torch.nn.Conv2d(4, 8, 3, groups=4), torch.nn.Conv2d(8, 8, 1))
    assert convert_depthwise(model) == 1
    assert [type(m).__name__ for m in model] == ['DepthwiseConv2d', 'Conv2d', 'Conv2d', 'Conv2d']
