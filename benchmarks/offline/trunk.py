"""The ``frozen-trunk`` trainer: train the last backbone units and the head on cached outputs of the frozen rest.

End-to-end CAR + OE training from pixels on a CPU takes hours for the quick protocol's rows and seeds (the measured
step time: benchmarks/offline_benchmark.md, "Trainer frozen-trunk"), so the quick protocol freezes the first
backbone units (ImageNet weights) and trains only the last ``--train-stages`` units plus the whole head. The frozen
part is a fixed function of the image, so its output is computed once per image and cached; training on the cache
is exactly training the full model with those units frozen (``tests/test_benchmark.py`` checks that loss and
gradients equal those of ``model(images)``), and the trained weights are an ordinary full model. The cache is all
this module adds: the step is the library's
(:class:`srdl_timm.training.SRDLTask` with :class:`srdl_timm.loss.SRDLLoss`, the model's public ``forward_head`` /
``forward_head_erasing``, timm's optimizer factory).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2

from srdl_timm.data import create_multilabel_loader
from srdl_timm.loss import SRDLLoss
from srdl_timm.training import SRDLTask
from benchmarks.offline.backbone_units import backbone_units

_logger = logging.getLogger(__name__)


class FrozenTrunk:
    """Split of a model's backbone into a frozen trunk (cached) and a trained tail.

    The units are :func:`benchmarks.offline.backbone_units.backbone_units` (stem, stages or blocks, final part, from timm's
    ``feature_info``): CNNs, Swin and other staged backbones, and ViTs whose blocks run on their own (ViT, DeiT).

    Args:
        model: an SRDL model or a ``benchmarks.peer_heads.PeerModel`` (its ``backbone`` is split; nothing is
            copied).
        train_stages: number of trailing units that are trained (0 = the whole backbone frozen; all units = nothing
            cached but the input).
        image_size: ``(H, W)`` of the images whose trunk outputs are cached: a token backbone's patch grid follows
            it (and the composition check runs at it).

    Raises:
        ValueError: ``train_stages`` larger than the number of units, or a backbone that cannot be split into units
            that compose to its ``forward_features`` (checked on a probe image); the message names ``--trainer fit``,
            which trains any backbone.
    """

    def __init__(self, model: nn.Module, train_stages: int, image_size: Tuple[int, int] = (64, 64)):
        fit = f'; train {model.backbone_name} with --trainer fit (or --end-to-end)'
        if model.feature_grid.from_intermediates:
            raise ValueError(f'the frozen-trunk trainer cannot split {model.backbone_name}: its feature map comes from '
                             f'forward_intermediates, not forward_features{fit}')
        try:
            units = backbone_units(model.backbone)
        except ValueError as e:
            raise ValueError(f'the frozen-trunk trainer cannot split {model.backbone_name}: {e}{fit}') from e
        if not 0 <= train_stages <= len(units):
            raise ValueError(f'--train-stages must be in [0, {len(units)}] for {model.backbone_name}, got {train_stages}')
        self.model = model
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_units = len(units)
        self.train_stages = train_stages
        self.trunk = nn.Sequential(*units[:len(units) - train_stages])
        self.tail = nn.Sequential(*units[len(units) - train_stages:])
        self._check_composition(fit)

    def _check_composition(self, fit: str) -> None:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                param = next(self.model.parameters())
                probe = torch.randn(2, self.model.in_chans, *self.image_size, generator=torch.Generator().manual_seed(0))
                probe = probe.to(param.device, param.dtype)
                ref = self.model.backbone.forward_features(probe)
                got = self.tail(self.trunk(probe))
        except Exception as e:  # noqa: BLE001  (a unit that cannot run on its own)
            raise ValueError(f'the units of {self.model.backbone_name} do not run on their own ({type(e).__name__}: '
                             f'{e}){fit}') from e
        finally:
            self.model.train(was)
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
            raise ValueError(f'the units of {self.model.backbone_name} do not reproduce its forward_features (it does '
                             f'more than run them in order, e.g. EVA\'s rotary embedding given to every block){fit}')

    def trunk_parameters(self) -> List[nn.Parameter]:
        """Parameters of the frozen trunk."""
        return list(self.trunk.parameters())

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Everything but the trunk (the tail and the whole head) that the model itself does not keep frozen
        (e.g. ML-Decoder's fixed queries)."""
        frozen = {id(p) for p in self.trunk_parameters()}
        return [p for p in self.model.parameters() if id(p) not in frozen and p.requires_grad]

    def freeze(self) -> None:
        """``requires_grad=False`` on the trunk; every other parameter keeps its own setting."""
        for p in self.trunk_parameters():
            p.requires_grad_(False)

    def features(self, cached: torch.Tensor) -> torch.Tensor:
        """The backbone feature map ``F`` from cached trunk outputs (= ``model.forward_features(images)``)."""
        return self.model.feature_grid(self.tail(cached), *self.image_size)

    def train_mode(self, batchnorm: str = 'frozen') -> None:
        """Training mode for the tail and head. ``batchnorm='frozen'``: every BatchNorm in evaluation mode (ImageNet
        running statistics, not updated); ``'train'``: the tail's BatchNorms use and update batch statistics (the
        trunk's stay frozen: its outputs are cached)."""
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        if batchnorm == 'train':
            for m in self.tail.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()

    def outputs(self, cached: torch.Tensor, erasing: bool) -> List[torch.Tensor]:
        """Logits (and, with ``erasing`` in training mode, the erased-pass logits of eq. 12) from cached trunk
        outputs: exactly what ``model(images)`` returns."""
        feat = self.features(cached)
        if erasing and self.model.training:
            logits, erased = self.model.forward_head_erasing(feat)  # SRDL.forward's training path, eqs. 7-12
            return [logits, erased]
        return [self.model.forward_head(feat)]


class CachedForward(nn.Module):
    """``model(images)`` computed from cached trunk outputs (:meth:`FrozenTrunk.outputs`): the module
    :class:`~srdl_timm.training.SRDLTask` trains. The task switches OE through :meth:`set_object_erasing`;
    ``amp_dtype`` autocasts the forward only (the loss stays float32)."""

    def __init__(self, split: FrozenTrunk, amp_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.model = split.model
        self.split = split
        self.amp_dtype = amp_dtype
        self.erasing = False

    def set_object_erasing(self, enable: bool = True) -> None:
        """With ``enable``, the training forward adds the erased pass (eq. 12), as ``SRDL.set_object_erasing``."""
        self.erasing = bool(enable)

    def forward(self, cached: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        autocast = (torch.autocast(device_type=cached.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.split.outputs(cached, self.erasing)
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


def extract_trunk_features(trunk: nn.Module, dataset: Any, batch_size: int = 64, workers: int = 0,
                           device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen trunk (eval mode) over a dataset once.

    Args:
        trunk: the frozen part of the backbone.
        dataset: yields ``(image tensor, target)`` (its transform already set).
        batch_size / workers: data loading.
        device: where the trunk runs (outputs are kept on the CPU).

    Returns:
        ``(features [N, c, h, w] float32, targets [N, C] float32)`` in dataset order.
    """
    device = device or torch.device('cpu')
    trunk.eval()
    loader = create_multilabel_loader(dataset, batch_size, is_training=False, num_workers=workers)
    feats, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            feats.append(trunk(images.to(device)).float().cpu())
            targets.append(target.float())
    return torch.cat(feats), torch.cat(targets)


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_frozen_trunk(
        split: FrozenTrunk,
        features: torch.Tensor,
        targets: torch.Tensor,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        seed: int,
        erasing: bool,
        loss_fn: Optional[SRDLLoss] = None,
        batchnorm: str = 'frozen',
        evaluate: Optional[Callable[[], Dict[str, float]]] = None,
        device: Optional[torch.device] = None,
        amp_dtype: Optional[torch.dtype] = None,
) -> List[Dict[str, Any]]:
    """Train the tail and head on cached trunk outputs; the trunk is untouched.

    Its own small loop, not :func:`srdl_timm.training.fit`: it indexes cached trunk outputs in memory, where ``fit``
    streams images from a dataset. Each step is :class:`~srdl_timm.training.SRDLTask` on :class:`CachedForward`
    (loss ``L_ori`` + ``L_era`` with ``erasing``, eqs. 11-13: ``loss_fn``, default
    :class:`srdl_timm.loss.SRDLLoss` with ``era_scope='all'``); AdamW from timm's factory (decoupled
    ``weight_decay`` on every trained parameter); linear warm-up for ``warmup_epochs`` then cosine decay to 0 over
    all steps, per step (a ``LambdaLR``: timm's schedulers warm up from ``warmup_lr_init``, not ``lr·(s+1)/W``);
    shuffled mini-batches (``torch.Generator`` seeded by ``seed``), the last incomplete batch dropped; BatchNorm as
    ``batchnorm`` (:meth:`FrozenTrunk.train_mode`).

    Args:
        split: the model and its trunk/tail split.
        features / targets: cached trunk outputs and labels of the training split.
        evaluate: called after every epoch (model in eval mode); its metrics go into the history.
        amp_dtype: autocast dtype of the training forward pass (the loss is float32), or None.

    Returns:
        Per-epoch history: ``epoch``, ``loss``, ``loss_ori``, ``loss_era`` (as the task reports it: ``loss -
        loss_ori``, the weighted L_era), ``lr``, ``time_s`` (+ evaluate's keys).

    Raises:
        ValueError: fewer training samples than one batch; FloatingPointError: a non-finite loss.
    """
    device = device or torch.device('cpu')
    n = features.shape[0]
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f'{n} training images are fewer than one batch of {batch_size}; lower --batch-size')
    split.freeze()
    task = SRDLTask(CachedForward(split, amp_dtype), object_erasing=erasing, loss=loss_fn or SRDLLoss(),
                    device=device, verbose=False)
    params = split.trainable_parameters()
    try:  # the fused kernel (CPU and CUDA) does the same update in one pass over the parameters
        optimizer = create_optimizer_v2(params, opt='adamw', lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = create_optimizer_v2(params, opt='adamw', lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_with_warmup(s, total, warmup))
    generator = torch.Generator().manual_seed(seed)
    history: List[Dict[str, Any]] = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        split.train_mode(batchnorm)
        order = torch.randperm(n, generator=generator)
        sums = np.zeros(3)
        for i in range(steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            result = task(features[index].to(device), targets[index].to(device))
            loss = result['loss']
            if not torch.isfinite(loss):
                raise FloatingPointError(f'non-finite loss {loss.item()} at epoch {epoch + 1}, step {i + 1}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += [loss.item(), result['loss_ori'].item(), result['loss_era'].item() if erasing else 0.0]
        row: Dict[str, Any] = {'epoch': epoch + 1, 'loss': sums[0] / steps_per_epoch,
                               'loss_ori': sums[1] / steps_per_epoch,
                               'loss_era': sums[2] / steps_per_epoch if erasing else None,
                               'lr': optimizer.param_groups[0]['lr'], 'time_s': time.perf_counter() - t0}
        if evaluate is not None:
            split.model.eval()
            row.update(evaluate())
        history.append(row)
        _logger.info('epoch %d/%d: loss %.4f%s (%.1fs)', epoch + 1, epochs, row['loss'],
                     ''.join(f', {k} {v:.2f}' for k, v in row.items() if k.startswith('val_')), row['time_s'])
    split.model.eval()
    return history


def frozen_trunk_attention(split: FrozenTrunk, features: torch.Tensor, batch_size: int = 256,
                            device: Optional[torch.device] = None) -> np.ndarray:
    """Spatial attention maps ``[N, C, h, w]`` (eq. 5) of the model on cached trunk outputs."""
    device = device or torch.device('cpu')
    split.model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, features.shape[0], batch_size):
            feat = split.features(features[i:i + batch_size].to(device))
            _, sa, _ = split.model.forward_category_features(feat)
            out.append(sa.unflatten(-1, feat.shape[-2:]).float().cpu().numpy())
    return np.concatenate(out)


def frozen_trunk_logits(split: FrozenTrunk, features: torch.Tensor, batch_size: int = 256,
                         device: Optional[torch.device] = None) -> torch.Tensor:
    device = device or torch.device('cpu')
    split.model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, features.shape[0], batch_size):
            out.append(split.outputs(features[i:i + batch_size].to(device), erasing=False)[0].float().cpu())
    return torch.cat(out)
