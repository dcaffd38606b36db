"""Tests of srdl_timm/data/transforms.py: the paper's §4.2 train/eval transforms built from a timm data config.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_data_transforms.py
"""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config
from torchvision.transforms import InterpolationMode

from srdl_timm.data import PAPER_SCALES, RandomSquareCrop, create_paper_transform, scaled_crop_sides

CFG = dict(input_size=(3, 48, 48), interpolation='bicubic', mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.1),
           crop_pct=0.875)


def _gradient(w=96, h=64):
    x = np.arange(w)[None, :, None].repeat(h, 0)
    y = np.arange(h)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x * 2, y * 3, (x + y) % 256], axis=2).astype(np.uint8))


def test_eval_squashes_to_size_and_normalises_with_config_mean_std():
    """Eval: any aspect ratio is squashed to size×size (no crop) and normalised with the config's mean/std."""
    t = create_paper_transform(CFG, is_training=False)
    out = t(Image.new('RGB', (100, 30), (255, 102, 0)))
    assert out.shape == (3, 48, 48)
    expected = (torch.tensor([1.0, 0.4, 0.0]) - torch.tensor(CFG['mean'])) / torch.tensor(CFG['std'])
    torch.testing.assert_close(out.mean((1, 2)), expected, atol=1e-5, rtol=0)
    assert create_paper_transform(CFG, False, size=32)(_gradient()).shape == (3, 32, 32)
    assert create_paper_transform(CFG, False, size=(40, 24))(_gradient()).shape == (3, 40, 24)


def test_eval_keeps_the_whole_image():
    """Eval does not centre-crop: the squashed output's corners come from the image's corners."""
    img = Image.new('RGB', (60, 60), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 6, 6))  # white top-left corner
    out = create_paper_transform(dict(CFG, mean=(0, 0, 0), std=(1, 1, 1)), False, size=30)(img)
    assert out[:, 0, 0].min() > 0.9 and out[:, -1, -1].max() < 0.1


def test_interpolation_and_size_come_from_a_timm_model_config():
    """resolve_data_config of a timm model drives interpolation (bicubic for resnet10t) and the default size."""
    cfg = resolve_data_config({}, model=timm.create_model('resnet10t', num_classes=3))
    t = create_paper_transform(cfg, is_training=False)
    assert t.transforms[0].interpolation == InterpolationMode.BICUBIC
    assert tuple(t.transforms[0].size) == tuple(cfg['input_size'][1:])
    assert tuple(t.transforms[-1].mean.tolist()) == pytest.approx(cfg['mean'])
    bil = create_paper_transform(dict(cfg, interpolation='bilinear'), is_training=True)
    assert all(getattr(s, 'interpolation', InterpolationMode.BILINEAR) == InterpolationMode.BILINEAR
               for s in bil.transforms)


def test_train_pipeline_order_matches_the_paper():
    """Train: resize 512 → random square crop, side in {512,…,256} → resize to size → hflip → tensor → norm."""
    t = create_paper_transform(CFG, is_training=True)
    names = [type(s).__name__ for s in t.transforms]
    assert names == ['Resize', 'RandomSquareCrop', 'Resize', 'RandomHorizontalFlip', 'ToTensor', 'Normalize']
    assert tuple(t.transforms[0].size) == (512, 512) and t.transforms[1].sizes == PAPER_SCALES
    assert tuple(t.transforms[2].size) == (48, 48)
    torch.manual_seed(0)
    assert t(_gradient()).shape == (3, 48, 48)


def test_scales_follow_the_resize():
    """Crop sides are given for 512 and rescaled by resize/512; sides above resize are clipped to it."""
    assert scaled_crop_sides(512) == (512, 448, 384, 320, 256)
    assert scaled_crop_sides(256) == (256, 224, 192, 160, 128)
    assert scaled_crop_sides(512, (640, 512, 256)) == (512, 256)
    assert create_paper_transform(CFG, True, resize=128).transforms[1].sizes == (128, 112, 96, 80, 64)


def test_random_square_crop_is_a_square_region_of_the_image():
    """Each crop is a square with a side from the set, inside the image, equal to the same PIL crop; every side
    is drawn over many calls."""
    img = _gradient(96, 64)
    crop = RandomSquareCrop((64, 48, 32, 200))
    arr = np.asarray(img)
    seen = set()
    for seed in range(60):
        torch.manual_seed(seed)
        top, left, side = crop.get_params(96, 64)
        torch.manual_seed(seed)
        out = np.asarray(crop(img))
        assert side in (64, 48, 32) and out.shape == (side, side, 3)
        assert 0 <= top <= 64 - side and 0 <= left <= 96 - side
        np.testing.assert_array_equal(out, arr[top:top + side, left:left + side])
        seen.add(side)
    assert seen == {64, 48, 32}  # 200 is clipped to the short side (64)


def test_train_flip_happens_about_half_the_time_and_is_seeded():
    """With a single full-image crop, the output is the resized image or its mirror, both occur, and the same
    torch seed gives the same output."""
    cfg = dict(CFG, mean=(0, 0, 0), std=(1, 1, 1))
    t = create_paper_transform(cfg, True, resize=48, scales=(512,), size=48)
    plain = create_paper_transform(cfg, False, size=48)(_gradient())
    flips = []
    for seed in range(16):
        torch.manual_seed(seed)
        out = t(_gradient())
        if torch.allclose(out, plain, atol=1e-6):
            flips.append(False)
        else:
            torch.testing.assert_close(out, plain.flip(-1), atol=1e-6, rtol=0)
            flips.append(True)
    assert 3 <= sum(flips) <= 13
    torch.manual_seed(4)
    a = create_paper_transform(CFG, True)(_gradient())
    torch.manual_seed(4)
    torch.testing.assert_close(a, create_paper_transform(CFG, True)(_gradient()))


def test_bad_config_and_sizes_raise():
    """A config without mean/std, non-positive crop sides or a malformed size raise ValueError."""
    with pytest.raises(ValueError, match="'mean'"):
        create_paper_transform(dict(input_size=(3, 8, 8), std=(1, 1, 1)), False)
    with pytest.raises(ValueError, match='positive'):
        RandomSquareCrop((0, 32))
    with pytest.raises(ValueError, match='size must be'):
        create_paper_transform(CFG, False, size=(1, 2, 3, 4))
