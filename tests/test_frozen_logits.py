"""Frozen logits: ``timm.create_model`` logits of every shipped tag and of SRDL on a CNN, ViT, Swin and EVA backbone
(tiny, seeded, spatial attention made non-constant) are bit-identical to the values saved in
``tests/frozen_logits.npz``, so a refactor of the kernels, the backbone adapter or the loading code cannot change a
number unnoticed. The saved values were written by the code before such a refactor:
``python tests/test_frozen_logits.py --write`` (one intra-op thread, as the tests run)."""
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import srdl_timm  # noqa: F401  (registers the models)

FROZEN = Path(__file__).with_name('frozen_logits.npz')
_SWIN = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4)

#: case -> (model name, create_model kwargs, input (H, W))
CASES = {
    'srdl_efficientnet_lite0.fashion_scenes': ('srdl_efficientnet_lite0.fashion_scenes', dict(pretrained=True),
                                               (128, 128)),
    'resnet': ('srdl_test_resnet', {}, (64, 96)),
    'vit': ('srdl_test_vit', {}, (64, 96)),
    'swin': ('srdl_test_resnet', dict(backbone='swin_tiny_patch4_window7_224', backbone_kwargs=_SWIN), (64, 64)),
    'eva': ('srdl_test_resnet', dict(backbone='eva02_tiny_patch14_224', backbone_kwargs=dict(depth=2)), (56, 84)),
}


def frozen_case(case: str):
    """``(model, x)`` of ``case``: seeded weights, ``f_s`` perturbed where not trained (non-constant SA), 2 images."""
    name, kwargs, size = CASES[case]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = timm.create_model(name, **kwargs).eval()
    if not kwargs.get('pretrained'):
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            model.car.f_s.weight.copy_(torch.randn(model.car.f_s.weight.shape, generator=generator))
    return model, torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))


def logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize('case', list(CASES))
def test_logits_are_bit_identical_to_the_frozen_values(case):
    """The model's logits equal the frozen ones bit for bit; the spatial attention of the untrained models is not
    constant (so the kernels of eqs. 5-6 matter to the logits)."""
    frozen = np.load(FROZEN)[case]
    model, x = frozen_case(case)
    with torch.no_grad():
        assert 'pretrained' in CASES[case][1] or model.attention_maps(x)['spatial_attention'].std() > 1e-3
    got = logits(model, x)
    assert got.dtype == frozen.dtype and got.shape == frozen.shape
    assert np.array_equal(got, frozen), f'{case}: max abs difference {np.abs(got - frozen).max():.3g}'


if __name__ == '__main__' and sys.argv[1:] == ['--write']:
    torch.set_num_threads(1)
    np.savez(FROZEN, **{case: logits(*frozen_case(case)) for case in CASES})
