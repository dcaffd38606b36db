"""Spatial attention maps (eq. 5) of SRDL as arrays and as PNG overlays (the paper's Figure 5), optionally with the
rectangle object erasing would erase (eqs. 7-10)."""
import io
import logging
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .labels import resolve_label_names
from .layers.oe import erase_region
from .utils import atomic_write_bytes

__all__ = [
    'explain', 'explain_batch', 'attention_forward', 'default_eval_transform',
    'upsample_maps', 'erase_box', 'heatmap_colors', 'render_overlay', 'render_panel', 'save_explanation',
    'ImageInput', 'PANEL_HEIGHT', 'DEFAULT_ERASE_ALPHA', 'NotExplainableError', 'check_explainable',
]

_logger = logging.getLogger(__name__)

#: height in pixels of every panel of the Figure-5-style ``*_panel.png`` (width follows the image's aspect ratio)
PANEL_HEIGHT = 256
#: OE threshold alpha used when the model carries none (the paper's default, §4.4)
DEFAULT_ERASE_ALPHA = 0.5
#: colour of the OE rectangle outline
_ERASE_COLOR = (0, 255, 0)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


def default_eval_transform(model: nn.Module, img_size: Optional[int] = None):
    """The project's eval transform (squash-resize, normalise) built from the model's timm data config."""
    from timm.data import resolve_data_config

    from .data.transforms import create_paper_transform
    config = resolve_data_config({}, model=model)
    size = None if img_size is None else (int(img_size), int(img_size))
    return create_paper_transform(config, is_training=False, size=size)


class NotExplainableError(InputError, TypeError):
    """The model has no spatial attention to explain (not an SRDL, no head, or built with ``use_sa=False``)."""


def check_explainable(model: nn.Module) -> None:
    """Raise :class:`NotExplainableError` unless ``model`` is an SRDL model with a category head and ``use_sa``."""
    if not hasattr(model, 'attention_maps') or not hasattr(model, 'forward_category_features'):
        raise NotExplainableError(f'{type(model).__name__} has no spatial attention maps to explain: explanations '
                                  'need an SRDL model (srdl_timm.SRDL)')
    if getattr(model, 'num_classes', 0) == 0:
        raise NotExplainableError('the model has no category head (num_classes=0): nothing to explain')
    if not getattr(model, 'use_sa', True):
        raise NotExplainableError('the model was built with use_sa=False: it has no spatial attention to explain')


def attention_forward(
        model: nn.Module, batch: torch.Tensor, amp_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One eval forward returning float32 ``(logits [B, C], SA [B, C, h, w])`` (only the backbone under AMP)."""
    check_explainable(model)
    if amp_dtype is None:
        out = model.attention_maps(batch)
        logits, sa = out['logits'], out.get('spatial_attention')
    else:
        with torch.autocast(device_type=batch.device.type, dtype=amp_dtype):
            feat_map = model.forward_features(batch)
        with torch.autocast(device_type=batch.device.type, enabled=False):
            feat_map = feat_map.float()
            features, sa_flat, _ = model.forward_category_features(feat_map)
            logits = model.get_classifier()(features)
            sa = None if sa_flat is None else sa_flat.unflatten(-1, tuple(feat_map.shape[-2:]))
    if sa is None:
        raise ValueError('the model returned no spatial attention (built with use_sa=False?)')
    return logits.float(), sa.float()


def upsample_maps(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinearly upsample ``[..., h, w]`` maps to ``size = (width, height)`` (``align_corners=False``)."""
    maps = np.asarray(maps, dtype=np.float32)
    width, height = int(size[0]), int(size[1])
    lead = maps.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(maps)).reshape(-1, 1, *maps.shape[-2:])
    up = F.interpolate(t, size=(height, width), mode='bilinear', align_corners=False)
    return up.reshape(*lead, height, width).numpy()


def erase_box(mask: np.ndarray, size: Tuple[int, int]) -> Optional[Tuple[int, int, int, int]]:
    """Pixel rectangle ``(left, top, right, bottom)`` (right/bottom exclusive) of an erase mask ``[h, w]`` on an
    image of ``size = (width, height)``; None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    grid_h, grid_w = mask.shape
    width, height = size
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    left = int(math.floor(cols[0] * width / grid_w))
    right = int(math.ceil((cols[-1] + 1) * width / grid_w))
    top = int(math.floor(rows[0] * height / grid_h))
    bottom = int(math.ceil((rows[-1] + 1) * height / grid_h))
    return left, top, min(right, width), min(bottom, height)


def explain_batch(
        model: nn.Module,
        batch: torch.Tensor,
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        topk: int = 3,
        label_names: Optional[Sequence[str]] = None,
        erase: bool = False,
        erase_alpha: Optional[float] = None,
        amp_dtype: Optional[torch.dtype] = None,
        upsample: bool = True,
) -> List[Dict[str, Any]]:
    """Explanations for an already transformed batch ``[B, C, H, W]`` (the arguments and dict keys of
    :func:`explain`; ``image_sizes``: ``(width, height)`` of each original image)."""
    if topk < 1:
        raise ValueError(f'topk must be >= 1, got {topk}')
    with torch.inference_mode():
        logits, sa = attention_forward(model, batch, amp_dtype)
    num_classes = logits.shape[1]
    names = list(label_names) if label_names is not None else resolve_label_names(model, num_classes)
    if len(names) != num_classes:
        raise ValueError(f'{len(names)} label names for a model with {num_classes} classes')
    if image_sizes is None:
        image_sizes = [(batch.shape[-1], batch.shape[-2])] * batch.shape[0]
    if len(image_sizes) != batch.shape[0]:
        raise ValueError(f'{len(image_sizes)} image sizes for a batch of {batch.shape[0]}')
    if erase_alpha is None:
        eraser = getattr(model, 'object_eraser', None)
        erase_alpha = float(getattr(eraser, 'alpha', DEFAULT_ERASE_ALPHA))
    k = min(topk, num_classes)
    probs = torch.sigmoid(logits)
    top = probs.topk(k, dim=1)
    index = top.indices
    selected = torch.gather(sa, 1, index[:, :, None, None].expand(-1, -1, *sa.shape[-2:]))
    masks = erase_region(selected, erase_alpha) if erase else None
    probs_np, sa_np = probs.cpu().numpy(), sa.cpu().numpy()
    index_np, sel_np = index.cpu().numpy(), selected.cpu().numpy()
    results: List[Dict[str, Any]] = []
    for b, size in enumerate(image_sizes):
        size = (int(size[0]), int(size[1]))
        result: Dict[str, Any] = {
            'size': size,
            'class_index': index_np[b].astype(np.int64),
            'labels': [names[int(c)] for c in index_np[b]],
            'scores': probs_np[b, index_np[b]].astype(np.float32),
            'probabilities': probs_np[b].astype(np.float32),
            'maps_raw': sel_np[b].astype(np.float32),
            'spatial_attention': sa_np[b].astype(np.float32),
        }
        if upsample:
            result['maps'] = upsample_maps(sel_np[b], size)
        if masks is not None:
            mask_np = masks[b].cpu().numpy()
            result['erase_alpha'] = erase_alpha
            result['erase_masks'] = mask_np
            result['erase_boxes'] = [erase_box(m, size) for m in mask_np]
        results.append(result)
    return results


def _as_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert('RGB') if image.mode != 'RGB' else image
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f'image arrays must be [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}')
        if array.dtype != np.uint8:
            raise ValueError(f'image arrays must be uint8, got {array.dtype}')
        return Image.fromarray(np.ascontiguousarray(array[..., :3]), mode='RGB')
    if isinstance(image, (str, os.PathLike)):
        from .data.images import open_image
        return open_image(image)
    raise TypeError(f'cannot explain an input of type {type(image).__name__}: pass PIL images, paths, uint8 '
                    'arrays or a normalised [B, 3, H, W] tensor')


def explain(
        model: nn.Module,
        images: Union[ImageInput, Sequence[ImageInput], torch.Tensor],
        topk: int = 3,
        label_names: Optional[Sequence[str]] = None,
        erase: bool = False,
        erase_alpha: Optional[float] = None,
        transform: Optional[Any] = None,
        batch_size: int = 16,
        amp_dtype: Optional[torch.dtype] = None,
        upsample: bool = True,
) -> List[Dict[str, Any]]:
    """Spatial attention maps of the top-k predicted categories of each image (the paper's Figure 5).

    Args:
        model: an SRDL model (put in eval mode).
        images: PIL images, paths, ``uint8`` arrays, or a normalised batch tensor.
        topk: categories per image, by predicted score.
        erase, erase_alpha: also compute the region OE would erase (alpha default: the model's).
        upsample: include ``maps`` at image resolution.

    Returns:
        One dict per image: ``size``, ``class_index``, ``labels``, ``scores``, ``probabilities``, ``maps_raw``
        ``[k, h, w]``, ``maps`` ``[k, H, W]``, ``spatial_attention`` ``[C, h, w]``; with ``erase`` also
        ``erase_alpha``, ``erase_masks`` and ``erase_boxes``.
    """
    check_explainable(model)
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if label_names is None:
        label_names = resolve_label_names(model, model.num_classes)
    model.eval()
    param = next(model.parameters())
    device = param.device
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f'a tensor input must be a normalised batch [B, 3, H, W], got shape {tuple(images.shape)}')
        out: List[Dict[str, Any]] = []
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start:start + batch_size].to(device=device, dtype=param.dtype)
            out.extend(explain_batch(model, chunk, None, topk, label_names, erase, erase_alpha, amp_dtype, upsample))
        return out
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    pil_images = [_as_pil(img) for img in images]
    if transform is None:
        transform = default_eval_transform(model)
    out = []
    for start in range(0, len(pil_images), batch_size):
        chunk = pil_images[start:start + batch_size]
        batch = torch.stack([transform(img) for img in chunk]).to(device=device, dtype=param.dtype)
        out.extend(explain_batch(model, batch, [img.size for img in chunk], topk, label_names, erase, erase_alpha,
                                 amp_dtype, upsample))
    return out


def heatmap_colors(values: np.ndarray) -> np.ndarray:
    """Jet colour map: values ``[...]`` in [0, 1] -> ``uint8 [..., 3]`` (0 = dark blue, 0.5 = green, 1 = dark red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks at v = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


def _normalise_map(attention: np.ndarray) -> np.ndarray:
    lo, hi = float(attention.min()), float(attention.max())
    if hi <= lo:
        return np.zeros_like(attention, dtype=np.float32)
    return ((attention - lo) / (hi - lo)).astype(np.float32)


def _font(height: int) -> ImageFont.ImageFont:
    size = max(10, int(round(height / 18)))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(
        image: Image.Image,
        attention: np.ndarray,
        label: Optional[str] = None,
        score: Optional[float] = None,
        erase_mask: Optional[np.ndarray] = None,
        opacity: float = 0.5,
        normalize: bool = True,
) -> Image.Image:
    """A new RGB image: one attention map over ``image`` as a heat map, captioned ``"label score"``, with the OE
    rectangle of ``erase_mask`` outlined in green."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f'opacity must be in [0, 1], got {opacity}')
    image = image.convert('RGB') if image.mode != 'RGB' else image
    width, height = image.size
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 2:
        raise ValueError(f'attention must be a 2-D map, got shape {attention.shape}')
    values = _normalise_map(attention) if normalize else np.clip(attention, 0.0, 1.0)
    if values.shape != (height, width):
        values = upsample_maps(values, (width, height))
    heat = heatmap_colors(values).astype(np.float32)
    base = np.asarray(image, dtype=np.float32)
    blended = np.rint(base * (1.0 - opacity) + heat * opacity).clip(0, 255).astype(np.uint8)
    out = Image.fromarray(blended, mode='RGB')
    draw = ImageDraw.Draw(out)
    if erase_mask is not None:
        box = erase_box(erase_mask, (width, height))
        if box is not None:
            line = max(1, int(round(min(width, height) / 100)))
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=_ERASE_COLOR, width=line)
    if label is not None or score is not None:
        text = ' '.join(s for s in (label, None if score is None else f'{score:.2f}') if s)
        font = _font(height)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, (bottom - top) // 4)
        draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
        draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return out


def render_panel(
        image: Image.Image,
        result: Dict[str, Any],
        panel_height: int = PANEL_HEIGHT,
        erase: bool = True,
        normalize: bool = True,
        gap: int = 4,
) -> Image.Image:
    """Figure-5-style row: the input, then one overlay per top-k category, each ``panel_height`` pixels high."""
    if panel_height < 1:
        raise ValueError(f'panel_height must be >= 1, got {panel_height}')
    width, height = image.size
    panel_width = max(1, int(round(width * panel_height / height)))
    small = image.convert('RGB').resize((panel_width, panel_height), Image.BILINEAR)
    masks = result.get('erase_masks') if erase else None
    panels = [small]
    for i, (label, score) in enumerate(zip(result['labels'], result['scores'])):
        panels.append(render_overlay(small, result['maps_raw'][i], label, float(score),
                                     None if masks is None else masks[i], normalize=normalize))
    row = Image.new('RGB', (len(panels) * panel_width + (len(panels) - 1) * gap, panel_height), (255, 255, 255))
    for i, panel in enumerate(panels):
        row.paste(panel, (i * (panel_width + gap), 0))
    return row


def _safe_name(text: str) -> str:
    name = re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('._')
    return name[:64] or 'label'


def _save_png(image: Image.Image, path: str) -> None:
    """PNG-encode in memory, then write atomically: a full disk leaves no truncated image and names the file."""
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    atomic_write_bytes(path, buf.getbuffer())


def save_explanation(
        image: Image.Image,
        result: Dict[str, Any],
        out_dir: Union[str, os.PathLike],
        stem: str,
        erase: bool = True,
        normalize: bool = True,
        panel: bool = True,
        panel_height: int = PANEL_HEIGHT,
) -> List[str]:
    """Write ``{stem}_top{r}_{label}.png`` per category (and ``{stem}_panel.png``); returns the paths written."""
    if tuple(image.size) != tuple(result['size']):
        raise ValueError(f'image size {image.size} differs from the explained size {tuple(result["size"])}')
    os.makedirs(out_dir, exist_ok=True)
    masks = result.get('erase_masks') if erase else None
    written = []
    for r, (label, score) in enumerate(zip(result['labels'], result['scores']), start=1):
        overlay = render_overlay(image, result['maps_raw'][r - 1], label, float(score),
                                 None if masks is None else masks[r - 1], normalize=normalize)
        path = os.path.join(os.fspath(out_dir), f'{stem}_top{r}_{_safe_name(label)}.png')
        _save_png(overlay, path)
        written.append(path)
    if panel:
        path = os.path.join(os.fspath(out_dir), f'{stem}_panel.png')
        _save_png(render_panel(image, result, panel_height, erase=erase, normalize=normalize), path)
        written.append(path)
    _logger.debug('wrote %d explanation images for %s', len(written), stem)
    return written
