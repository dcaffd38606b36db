"""Robust image opening (8-bit RGB, as timm's loader) and the multi-label dataset base class."""
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = ['UnreadableImageError', 'AnnotationError', 'open_image', 'MultiLabelDataset', 'check_files_exist',
           'ON_CORRUPT_CHOICES']

_logger = logging.getLogger(__name__)

ON_CORRUPT_CHOICES = ('error', 'skip')

#: side of the black image handed to the transform in place of an unreadable one (``on_corrupt='skip'``)
_PLACEHOLDER_SIZE = 64


class UnreadableImageError(InputError):
    """An image file exists but cannot be decoded; the message starts with the file's path."""


class AnnotationError(InputError):
    """A dataset's annotation file is malformed or inconsistent; the message names the file and line or entry."""


def _to_rgb(img: Image.Image, path: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit and 32-bit integer gray are rescaled, not clipped."""
    mode = img.mode
    if mode == 'RGB':
        return img
    if mode.startswith('I;16') or mode == 'I':
        # 16-bit gray (PNG/TIFF): PIL's convert('RGB') would clip every value above 255 to white.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode='L').convert('RGB')
    if mode == 'F':
        arr = np.asarray(img, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise UnreadableImageError(f'{path}: floating-point image contains NaN or infinite values')
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0  # a [0, 1] float image
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode='L').convert('RGB')
    if mode == 'P':
        # palette images with a transparency entry must go through RGBA (PIL warns otherwise)
        img = img.convert('RGBA') if 'transparency' in img.info else img
    try:
        return img.convert('RGB')
    except (ValueError, OSError) as e:
        raise UnreadableImageError(f'{path}: cannot convert image mode {mode!r} to RGB: {e}') from e


def open_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image file fully decoded as 8-bit RGB; raise ``FileNotFoundError`` or :class:`UnreadableImageError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'image file not found: {path}')
    if os.path.getsize(path) == 0:
        raise UnreadableImageError(f'{path}: empty file (0 bytes), not an image')
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode so truncated files fail here, not in the transform
            return _to_rgb(img, path).copy()
    except UnreadableImageError:
        raise
    except UnidentifiedImageError as e:
        raise UnreadableImageError(f'{path}: not a readable image file ({e})') from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f'{path}: corrupt or truncated image ({type(e).__name__}: {e})') from e


def _check_targets(targets: np.ndarray, num_images: int, num_classes: int, where: str) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (num_images, num_classes):
        raise ValueError(f'{where}: targets have shape {targets.shape}, expected ({num_images}, {num_classes})')
    bad = ~np.isin(targets, (-1.0, 0.0, 1.0))
    if bad.any():
        i, c = np.argwhere(bad)[0]
        raise ValueError(f'{where}: target values must be 1 (present), 0 (absent) or -1 (ignore); '
                         f'got {targets[i, c]} for image {i}, class {c}')
    return targets


class MultiLabelDataset(Dataset):
    """A list of images with multi-label targets; the base of every dataset in :mod:`srdl_timm.data`.

    ``dataset[i]`` is ``(transform(image), target)``, target float32 ``[C]``; ``on_corrupt='skip'`` gives an
    unreadable image as a black placeholder with an all ``-1`` target, ``'error'`` raises.
    """

    def __init__(
            self,
            image_paths: Sequence[str],
            targets: np.ndarray,
            label_names: Sequence[str],
            transform: Optional[Callable[[Image.Image], Any]] = None,
            on_corrupt: str = 'error',
            info: Optional[Dict[str, Any]] = None,
    ) -> None:
        if on_corrupt not in ON_CORRUPT_CHOICES:
            raise InputError(f'on_corrupt must be one of {ON_CORRUPT_CHOICES}, got {on_corrupt!r}')
        label_names = [str(n) for n in label_names]
        if len(set(label_names)) != len(label_names):
            dup = sorted({n for n in label_names if label_names.count(n) > 1})
            raise InputError(f'label names must be unique; duplicated: {dup}')
        if not label_names:
            raise ValueError('a multi-label dataset needs at least one class')
        self.image_paths: List[str] = [os.fspath(p) for p in image_paths]
        self.label_names: List[str] = label_names
        self.targets: np.ndarray = _check_targets(
            targets, len(self.image_paths), len(label_names), (info or {}).get('name', type(self).__name__))
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.info: Dict[str, Any] = dict(info or {})
        self.num_skipped = 0

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, index: int) -> Optional[Image.Image]:
        """Open sample ``index`` as RGB; under ``on_corrupt='skip'`` return None (logged, counted) if unreadable."""
        path = self.image_paths[index]
        try:
            return open_image(path)
        except UnreadableImageError as e:
            if self.on_corrupt == 'error':
                raise UnreadableImageError(f'{e}; --on-corrupt skip (on_corrupt=\'skip\') leaves unreadable images '
                                           'out, counted') from e
            self.num_skipped += 1
            _logger.warning('skipping unreadable image (target set to ignore): %s', e)
            return None

    def __getitem__(self, index: int) -> Tuple[Any, torch.Tensor]:
        img = self.load_image(index)
        target = torch.from_numpy(self.targets[index].copy())
        if img is None:
            img = Image.new('RGB', (_PLACEHOLDER_SIZE, _PLACEHOLDER_SIZE))
            target.fill_(-1.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def labels(self, index: int) -> List[str]:
        """Names of the classes present (target 1) in sample ``index``."""
        return [self.label_names[c] for c in np.flatnonzero(self.targets[index] == 1)]

    def __repr__(self) -> str:
        name = self.info.get('name', type(self).__name__)
        return (f'{type(self).__name__}({name!r}, num_images={len(self)}, num_classes={self.num_classes}, '
                f'on_corrupt={self.on_corrupt!r}, transform={self.transform!r})')


def check_files_exist(paths: Sequence[str], listed_in: str, max_shown: int = 5) -> None:
    """Raise FileNotFoundError naming the missing image files (first ``max_shown``) and the file listing them."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        def why(p: str) -> str:
            if os.path.islink(p):
                try:
                    os.stat(p)
                except OSError as e:
                    return f'{p} (symbolic link: {e.strerror})'
            return p if not os.path.isdir(p) else f'{p} (a folder)'
        shown = ', '.join(why(p) for p in missing[:max_shown]) + (', ...' if len(missing) > max_shown else '')
        raise FileNotFoundError(f'{len(missing)} of {len(paths)} image files listed in {listed_in} are missing: '
                                f'{shown}')
