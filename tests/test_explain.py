"""Tests of srdl_timm/explain.py: the spatial attention maps of the top-k categories (the paper's Figure 5) as
arrays, the OE rectangle, and the PNG overlays written for them.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_explain.py
"""
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import srdl_timm  # noqa: F401
from srdl_timm.data.transforms import create_paper_transform
from srdl_timm.explain import (
    PANEL_HEIGHT, erase_box, explain, heatmap_colors, render_overlay, render_panel, save_explanation, upsample_maps)
from srdl_timm.layers.oe import erase_region

from fixtures_attention import assert_attention_not_constant, spatial_attention_on

LABELS = ['person', 'bus', 'traffic light', 'dog', 'cat']
SIZE = 128  # test_resnet's stride 32 -> a 4x4 attention grid




@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    emb = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    m = timm.create_model('srdl_test_resnet', num_classes=5, label_names=LABELS, label_embeddings=emb,
                          pretrained_cfg_overlay=dict(input_size=(3, SIZE, SIZE)))
    spatial_attention_on(m).eval()  # SA varies over positions: maps and erase masks are not trivial
    assert_attention_not_constant(m, torch.randn(2, 3, SIZE, SIZE))
    return m


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('explain')
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h) in enumerate([(150, 100), (64, 96), (128, 128)]):
        path = str(root / f'img{i}.{"png" if i % 2 else "jpg"}')
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _reference_attention(model, path):
    cfg = dict(input_size=(3, SIZE, SIZE), interpolation='bilinear', mean=model.pretrained_cfg['mean'],
               std=model.pretrained_cfg['std'])
    x = create_paper_transform(cfg, False)(Image.open(path).convert('RGB'))[None]
    with torch.no_grad():
        out = model.attention_maps(x)
    return torch.sigmoid(out['logits'])[0].numpy(), out['spatial_attention'][0].numpy()


def test_explain_returns_top_k_maps_of_the_model(model, images):
    """For each image: the k categories with the highest sigmoid scores (descending), their names, and exactly the
    model's spatial attention maps for them on the grid, upsampled to the image's own size."""
    results = explain(model, images, topk=3, batch_size=2)
    assert len(results) == len(images)
    for path, res in zip(images, results):
        probs, sa = _reference_attention(model, path)
        order = np.argsort(-probs, kind='stable')[:3]
        assert list(res['class_index']) == list(order)
        assert res['labels'] == [LABELS[i] for i in order]
        np.testing.assert_allclose(res['scores'], probs[order], atol=1e-6)
        assert np.all(np.diff(res['scores']) <= 0)
        np.testing.assert_allclose(res['probabilities'], probs, atol=1e-6)
        np.testing.assert_allclose(res['maps_raw'], sa[order], atol=1e-6)
        np.testing.assert_allclose(res['spatial_attention'], sa, atol=1e-6)
        w, h = Image.open(path).size
        assert res['size'] == (w, h)
        assert res['maps'].shape == (3, h, w) and res['maps'].dtype == np.float32
        assert res['maps_raw'].shape == (3, SIZE // 32, SIZE // 32)
        assert 0.0 < res['maps'].min() and res['maps'].max() < 1.0
        # bilinear upsampling stays within the grid's range and keeps each cell's value at its centre
        assert res['maps'].max() <= res['maps_raw'].max() + 1e-6
        assert res['maps'].min() >= res['maps_raw'].min() - 1e-6


def test_explain_accepts_pil_arrays_and_normalised_tensors(model, images):
    """A PIL image, a uint8 array and a path give the same result; a normalised tensor batch is used as is."""
    pil = Image.open(images[0]).convert('RGB')
    from_path = explain(model, images[0])[0]
    from_pil = explain(model, pil)[0]
    from_array = explain(model, np.asarray(pil))[0]
    for other in (from_pil, from_array):
        np.testing.assert_allclose(other['maps_raw'], from_path['maps_raw'], atol=1e-6)
    x = torch.randn(2, 3, SIZE, SIZE)
    res = explain(model, x, topk=2)
    with torch.no_grad():
        sa = model.attention_maps(x)['spatial_attention'].numpy()
    assert res[0]['size'] == (SIZE, SIZE) and res[0]['maps'].shape == (2, SIZE, SIZE)
    np.testing.assert_allclose(res[1]['maps_raw'], sa[1, res[1]['class_index']], atol=1e-6)


def test_erase_masks_are_the_oe_region_and_boxes_cover_it(model, images):
    """erase=True returns, per selected map, erase_region(map, alpha) of layers/oe.py and the pixel rectangle of
    that region on the image; every selected map's SA varies, so every mask is non-empty and has a box."""
    res = explain(model, images[0], topk=3, erase=True, erase_alpha=0.5)[0]
    assert all(mask.any() for mask in res['erase_masks']) and None not in res['erase_boxes']
    expected = erase_region(torch.from_numpy(res['maps_raw']), 0.5).numpy()
    np.testing.assert_array_equal(res['erase_masks'], expected)
    assert res['erase_alpha'] == 0.5
    w, h = res['size']
    grid_h, grid_w = res['maps_raw'].shape[1:]
    for mask, box in zip(res['erase_masks'], res['erase_boxes']):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert box == (int(np.floor(cols[0] * w / grid_w)), int(np.floor(rows[0] * h / grid_h)),
                       int(np.ceil((cols[-1] + 1) * w / grid_w)), int(np.ceil((rows[-1] + 1) * h / grid_h)))
    # alpha defaults to the model's OE alpha
    assert explain(model, images[0], erase=True)[0]['erase_alpha'] == model.object_eraser.alpha


def test_erase_box_maps_grid_cells_to_pixels():
    """Rows 1-2 and columns 2-3 of a 4x5 grid on a 100x80 image are the pixels [40, 80) x [20, 60); an empty mask
    has no box."""
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:4] = True
    assert erase_box(mask, (100, 80)) == (40, 20, 80, 60)
    assert erase_box(np.zeros((4, 5), dtype=bool), (100, 80)) is None
    assert erase_box(np.ones((2, 2), dtype=bool), (7, 5)) == (0, 0, 7, 5)


def test_heatmap_colors_and_upsampling():
    """The jet map goes blue -> green -> red; upsampling keeps a constant map constant and puts a hot top-left cell
    in the top-left of the image."""
    colors = heatmap_colors(np.array([0.0, 0.5, 1.0]))
    assert colors.dtype == np.uint8 and colors.shape == (3, 3)
    assert colors[0, 2] > 100 and colors[0, 0] == 0          # low: blue
    assert colors[1, 1] == 255 and colors[1, 0] < 130 and colors[1, 2] < 130  # middle: green
    assert colors[2, 0] > 100 and colors[2, 2] == 0          # high: red
    const = upsample_maps(np.full((2, 3, 3), 0.25, dtype=np.float32), (31, 17))
    assert const.shape == (2, 17, 31) and np.allclose(const, 0.25)
    hot = np.zeros((4, 4), dtype=np.float32)
    hot[0, 0] = 1.0
    up = upsample_maps(hot, (40, 40))
    y, x = np.unravel_index(up.argmax(), up.shape)
    assert y < 10 and x < 10 and up[30:, 30:].max() == 0.0


def test_render_overlay_colours_caption_and_oe_rectangle():
    """The overlay has the image's size; where the map peaks it is red, where it is lowest blue; the caption box is
    drawn top-left and the OE rectangle outline is green."""
    image = Image.new('RGB', (200, 120), (128, 128, 128))
    attn = np.zeros((4, 4), dtype=np.float32)
    attn[3, 3] = 0.9  # peak bottom-right
    attn[0, 0] = 0.1
    out = np.asarray(render_overlay(image, attn, opacity=1.0))
    assert out.shape == (120, 200, 3)
    assert out[-2, -2, 0] > 100 and out[-2, -2, 2] == 0       # red at the peak
    assert out[60, 20, 2] > 100 and out[60, 20, 0] == 0       # blue where the map is lowest
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:4, 2:4] = True
    framed = np.asarray(render_overlay(image, attn, 'bus', 0.87, erase_mask=mask, opacity=0.0))
    assert tuple(framed[60, 150]) == (0, 255, 0)               # top edge of the rectangle [100,200) x [60,120)
    assert tuple(framed[90, 100]) == (0, 255, 0)               # left edge
    assert tuple(framed[90, 150]) == (128, 128, 128)           # inside, untouched at opacity 0
    assert tuple(framed[2, 2]) == (0, 0, 0)                    # caption background
    assert framed[:20, :60].min(-1).max() > 200                # caption text (white, anti-aliased)
    flat = np.asarray(render_overlay(image, np.full((4, 4), 0.3, dtype=np.float32), opacity=1.0))
    assert (flat == heatmap_colors(np.zeros(1))[0]).all()      # a flat map is all low after normalisation


def test_save_explanation_writes_valid_pngs_of_the_documented_sizes(model, images, tmp_path):
    """save_explanation writes k overlays at the input image's size and a panel PANEL_HEIGHT high and
    (k+1) * panel_width + k * 4 wide; each file decodes as a PNG."""
    for path in images[:2]:
        image = Image.open(path).convert('RGB')
        res = explain(model, image, topk=3, erase=True)[0]
        stem = os.path.splitext(os.path.basename(path))[0]
        files = save_explanation(image, res, tmp_path, stem)
        assert [os.path.basename(f) for f in files] == [
            f'{stem}_top1_{res["labels"][0].replace(" ", "_")}.png',
            f'{stem}_top2_{res["labels"][1].replace(" ", "_")}.png',
            f'{stem}_top3_{res["labels"][2].replace(" ", "_")}.png', f'{stem}_panel.png']
        for f in files[:3]:
            with Image.open(f) as png:
                png.verify()
            with Image.open(f) as png:
                assert png.format == 'PNG' and png.size == image.size and png.mode == 'RGB'
        panel_width = round(image.width * PANEL_HEIGHT / image.height)
        with Image.open(files[3]) as png:
            assert png.format == 'PNG' and png.size == (4 * panel_width + 3 * 4, PANEL_HEIGHT)
        assert render_panel(image, res, panel_height=50).size[1] == 50
    with pytest.raises(ValueError, match='differs'):
        save_explanation(Image.new('RGB', (10, 10)), res, tmp_path, 'x')


def test_amp_maps_are_close_to_float32(model, images):
    """With a bfloat16 backbone (head in float32) the maps and scores stay close to the float32 ones."""
    ref = explain(model, images[2], topk=5)[0]
    amp = explain(model, images[2], topk=5, amp_dtype=torch.bfloat16)[0]
    assert amp['maps_raw'].dtype == np.float32
    order = np.argsort(ref['class_index'])
    amp_order = np.argsort(amp['class_index'])
    np.testing.assert_allclose(amp['maps_raw'][amp_order], ref['maps_raw'][order], atol=0.05)
    np.testing.assert_allclose(amp['probabilities'], ref['probabilities'], atol=0.05)


def test_models_without_spatial_attention_are_refused():
    """A plain timm CNN and an SRDL built with use_sa=False have no SA maps: explain raises a clear error."""
    with pytest.raises(TypeError, match='SRDL'):
        explain(timm.create_model('test_resnet', num_classes=3), torch.randn(1, 3, 64, 64))
    no_sa = timm.create_model('srdl_test_resnet', num_classes=2, use_sa=False,
                              label_embeddings=np.ones((2, 16), dtype=np.float32))
    with pytest.raises(ValueError, match='use_sa=False'):
        explain(no_sa, torch.randn(1, 3, 64, 64))
