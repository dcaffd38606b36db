"""SRDL models whose spatial attention (SA, eq. 5) is not trivial, for the tests that compare two paths of a model.

A freshly built SRDL zero-initialises ``f_s``, so SA is exactly 0.5 at every position: two paths that differ in
eq. 5, or in object erasing (a flat map erases nothing), then give the same logits and such a test cannot fail.

    spatial_attention_on(model)              seeded normal f_sa, f_s (eq. 5): SA varies over positions
    assert_attention_not_constant(model, x)  the guard: fails when SA on x is (nearly) constant over positions
    known_attention_head(model)              head weights with a closed-form SA and CA (the known-answer OE tests)
    block_feature_map(...)                   the feature map those tests feed: ``value`` on a block of cells, else 0
"""
import torch

#: the smallest max - min of SA over the positions of any (image, class) that the guard accepts
MIN_SA_RANGE = 1e-3


def spatial_attention_on(model, seed: int = 0, f_sa_gain: float = 30.0, f_s_gain: float = 3.0):
    """Give ``f_sa`` and ``f_s`` of eq. 5 seeded normal weights of std ``gain / sqrt(fan_in)`` and normal biases, so
    SA varies over positions even on a randomly initialised backbone, whose features vary little from cell to cell
    (a large ``f_sa`` spreads them over tanh's range); returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, gain in ((model.car.f_sa, f_sa_gain), (model.car.f_s, f_s_gain)):
            std = gain / layer.weight.shape[1] ** 0.5
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=layer.weight.dtype) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=layer.bias.dtype))
    return model


def assert_attention_not_constant(model, x, min_range: float = MIN_SA_RANGE):
    """Fail unless SA of ``model`` on ``x`` spans at least ``min_range`` over the positions, for every image and
    class (computed in eval mode, the model's mode restored after); returns the SA maps ``[B, C, h, w]``."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sa = model.attention_maps(x)['spatial_attention']
    finally:
        model.train(training)
    spread = sa.flatten(2).amax(-1) - sa.flatten(2).amin(-1)
    assert spread.min().item() >= min_range, (
        f'spatial attention is (nearly) constant over positions: max - min = {spread.min().item():.3g} < '
        f'{min_range}; a comparison of two paths of this model cannot see eq. 5 or object erasing')
    return sa


def known_attention_head(model, f_s_weight: float, f_s_bias: float):
    """Set the CAR head so that, for every class c, ``f_w(x_c) = 1``, ``f_sa`` is the identity and ``f_s`` has
    weight ``f_s_weight`` on every channel: ``SA[p] = sigmoid(f_s_weight * sum_k tanh(F[p, k]) + f_s_bias)``
    (eq. 5), and ``f_ca = f_c = 0``: ``CA = sigmoid(0) = 0.5`` (eq. 4). Returns ``model``."""
    car = model.car
    with torch.no_grad():
        for layer in (car.f_w, car.f_sa, car.f_ca, car.f_c):
            layer.weight.zero_()
            layer.bias.zero_()
        car.f_w.bias.fill_(1.0)
        car.f_sa.weight.copy_(torch.eye(car.f_sa.weight.shape[0]))
        car.f_s.weight.fill_(f_s_weight)
        car.f_s.bias.fill_(f_s_bias)
    return model


def block_feature_map(batch: int, channels: int, height: int, width: int, rows, cols, value: float,
                      dtype=torch.float64):
    """A feature map ``[batch, channels, height, width]``: ``value`` on every channel of the cells
    ``rows x cols`` (slices), 0 elsewhere."""
    feat = torch.zeros(batch, channels, height, width, dtype=dtype)
    feat[:, :, rows, cols] = value
    return feat
