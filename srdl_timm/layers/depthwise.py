"""Depthwise convolutions with a faster CPU training backward, swapped into any timm CNN in place.

Why our own: PyTorch's CPU ``convolution_backward`` for depthwise convolutions (oneDNN) is 10-25x slower than their
forward when the convolution is dilated (the last stages of a backbone run at ``output_stride=16``), when its
incoming gradient is not in the input's memory format, or under bfloat16 autocast (``benchmarks/RESULTS.md``,
issue #29). The input gradient of a stride-1 depthwise convolution is itself a depthwise forward convolution with
the spatially flipped kernel, which oneDNN runs fast; the weight gradient keeps PyTorch's kernel but gets its
operands in one memory format and in float32 (PyTorch's bfloat16 weight gradient is the slow one). The forward and
the stride-1 input gradient run in the autocast dtype, as PyTorch's layer would.

:func:`convert_depthwise` swaps the class of every depthwise ``nn.Conv2d`` (and timm's ``Conv2dSame``) in a model:
parameters, their names and the state dict stay the same objects, so optimizers, checkpoints and published weights
are unaffected; :func:`restore_depthwise` swaps them back (for export and scripting).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import Tensor, nn

__all__ = ['DepthwiseConv2d', 'DepthwiseConv2dSame', 'convert_depthwise', 'depthwise_conv2d', 'restore_depthwise']


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 when it is in a 16-bit dtype (float64 stays float64)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _DepthwiseConv2dFunction(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=channels)`` in the autocast dtype (else ``x``'s),
    with the input gradient of stride-1 convolutions computed as the forward convolution of the output gradient with
    the flipped kernel, and the weight gradient in float32."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
                dilation: Tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), stride, padding,
                            dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        grad_output = grad_output.contiguous(memory_format=_memory_format(x))
        channels, need_input, need_weight = x.shape[1], ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        flipped_padding = [d * (k - 1) - p for d, k, p in zip(dilation, weight.shape[-2:], padding)]
        fast_input = need_input and tuple(stride) == (1, 1) and min(flipped_padding) >= 0
        grad_input = grad_weight = grad_bias = None
        if fast_input:  # in the gradient's dtype: oneDNN's depthwise forward is fast in float32 and bfloat16
            kernel = weight.to(grad_output.dtype).flip(-2, -1)
            grad_input = F.conv2d(grad_output, kernel, None, 1, flipped_padding, dilation, channels)
        if need_weight or (need_input and not fast_input):  # PyTorch's kernel, in float32 (its bfloat16 is slow)
            grad_input_aten, grad_weight, _ = torch.ops.aten.convolution_backward(
                _wide(grad_output), _wide(x), _wide(weight), None, list(stride), list(padding), list(dilation),
                False, [0, 0], channels, [need_input and not fast_input, need_weight, False])
            grad_input = grad_input if fast_input else grad_input_aten
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _wide(grad_output).sum((0, 2, 3)).to(weight.dtype)
        grad_input = None if grad_input is None else grad_input.to(x.dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor = None, stride: Tuple[int, int] = (1, 1),
                     padding: Tuple[int, int] = (0, 0), dilation: Tuple[int, int] = (1, 1)) -> Tensor:
    """A depthwise convolution (``weight`` shaped ``[C, 1, kh, kw]``) with the faster backward."""
    if weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f'depthwise_conv2d needs a [C, 1, kh, kw] weight for {x.shape[1]} input channels, got '
                         f'{tuple(weight.shape)}')
    return _DepthwiseConv2dFunction.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``groups == in_channels == out_channels`` run by :func:`depthwise_conv2d`."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return depthwise_conv2d(input, weight, bias, self.stride, self.padding, self.dilation)


class DepthwiseConv2dSame(Conv2dSame):
    """timm's ``Conv2dSame`` (TensorFlow 'SAME' padding computed per input) run by :func:`depthwise_conv2d`."""

    def forward(self, x: Tensor) -> Tensor:
        x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation)


_SWAPS = {Conv2dSame: DepthwiseConv2dSame, nn.Conv2d: DepthwiseConv2d}


def _is_depthwise(module: nn.Conv2d) -> bool:
    return (module.groups > 1 and module.groups == module.in_channels == module.out_channels
            and module.padding_mode == 'zeros' and not isinstance(module.padding, str))


def convert_depthwise(model: nn.Module) -> int:
    """Swap every depthwise ``nn.Conv2d`` / ``Conv2dSame`` of ``model`` (exact classes only) to the classes above,
    in place; returns how many were swapped. Parameters and the state dict are unchanged."""
    swapped = 0
    for module in model.modules():
        target = _SWAPS.get(type(module))
        if target is not None and _is_depthwise(module):
            module.__class__ = target
            swapped += 1
    return swapped


def restore_depthwise(model: nn.Module) -> int:
    """Undo :func:`convert_depthwise` in place; returns how many modules were swapped back."""
    back = {new: old for old, new in _SWAPS.items()}
    restored = 0
    for module in model.modules():
        if type(module) in back:
            module.__class__ = back[type(module)]
            restored += 1
    return restored
