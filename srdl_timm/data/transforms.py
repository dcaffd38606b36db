"""The paper's train and eval transforms (§4.2), built from a timm data config."""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms as T
from torchvision.transforms import functional as F

__all__ = ['RandomSquareCrop', 'create_paper_transform', 'PAPER_RESIZE', 'PAPER_SCALES', 'scaled_crop_sides']

#: §4.2 train resize and crop sides (for a 512×512 resized image)
PAPER_RESIZE = 512
PAPER_SCALES = (512, 448, 384, 320, 256)


class RandomSquareCrop(torch.nn.Module):
    """Crop a square of a side drawn from ``sizes`` at a uniformly random position (§4.2)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = tuple(int(s) for s in sizes)
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f'crop sizes must be positive integers, got {sizes}')
        self.sizes = sizes

    def get_params(self, width: int, height: int) -> Tuple[int, int, int]:
        """Draw ``(top, left, side)`` for an image of the given size."""
        side = self.sizes[int(torch.randint(len(self.sizes), (1,)))]
        side = min(side, width, height)
        top = int(torch.randint(height - side + 1, (1,)))
        left = int(torch.randint(width - side + 1, (1,)))
        return top, left, side

    def forward(self, img: Union[Image.Image, torch.Tensor]) -> Union[Image.Image, torch.Tensor]:
        width, height = F.get_image_size(img)
        top, left, side = self.get_params(width, height)
        return F.crop(img, top, left, side, side)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(sizes={self.sizes})'


def scaled_crop_sides(resize: int, scales: Sequence[int] = PAPER_SCALES) -> Tuple[int, ...]:
    """Crop sides for a ``resize``² image: ``scales`` (given for 512) times ``resize/512``, at most ``resize``."""
    if resize <= 0:
        raise ValueError(f'resize must be positive, got {resize}')
    factor = resize / PAPER_RESIZE
    sides = tuple(sorted({max(1, min(resize, int(round(s * factor)))) for s in scales}, reverse=True))
    if not sides:
        raise ValueError('scales must not be empty')
    return sides


def _hw(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 3:  # timm input_size (C, H, W)
        size = size[1:]
    if len(size) != 2:
        raise ValueError(f'size must be an int, (H, W) or (C, H, W), got {size}')
    return size[0], size[1]


def create_paper_transform(
        data_config: Dict[str, Any],
        is_training: bool,
        resize: int = PAPER_RESIZE,
        scales: Sequence[int] = PAPER_SCALES,
        size: Optional[Union[int, Sequence[int]]] = None,
) -> T.Compose:
    """Build the §4.2 train or eval transform for PIL RGB images.

    Train: squash-resize to ``resize`` → square crop of a side from ``scales`` (for a 512 resize) → squash-resize to
    ``size`` → flip → normalise. Eval: squash-resize to ``size`` → normalise (statistics from ``data_config``).
    """
    for key in ('mean', 'std'):
        if key not in data_config:
            raise ValueError(f'data_config has no {key!r}; build it with timm.data.resolve_data_config({{}}, model=m)')
    if size is None:
        if 'input_size' not in data_config:
            raise ValueError('data_config has no "input_size" and no size was given')
        size = data_config['input_size']
    height, width = _hw(size)
    interpolation = str_to_interp_mode(data_config.get('interpolation', 'bilinear') or 'bilinear')
    normalize = T.Normalize(mean=torch.tensor(data_config['mean']), std=torch.tensor(data_config['std']))
    if is_training:
        return T.Compose([
            T.Resize((resize, resize), interpolation=interpolation),
            RandomSquareCrop(scaled_crop_sides(resize, scales)),
            T.Resize((height, width), interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            normalize,
        ])
    return T.Compose([
        T.Resize((height, width), interpolation=interpolation),
        T.ToTensor(),
        normalize,
    ])
