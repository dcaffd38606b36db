"""Shipping the CAR + OE model of a benchmark run as a timm Hub folder (and, optionally, in weights/manifest.json)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
import torch.nn as nn

from srdl_timm.data import create_multilabel_loader, create_paper_transform
from srdl_timm.validate import AP_DEFINITIONS

from .environment import software_versions
from .stats import metrics_from_logits, predict_logits


def _evaluation_protocol(ctx: Any, split: str, num_images: int, evaluated: int, notes: str) -> Dict[str, Any]:
    dc = ctx.data_config
    info = ctx.spec.info
    dataset = info['name'] + (f" v{info['version']} (preset {info['preset']}, seed {info['seed']})"
                              if ctx.spec.source == 'fashion-scenes' else '')
    return dict(ap_definitions=AP_DEFINITIONS, units='percent', split=split, dataset=dataset,
                num_images=num_images, num_images_evaluated=evaluated, input_size=list(dc['input_size']),
                resize='squash to input_size (no centre crop)', interpolation=dc.get('interpolation'),
                mean=list(dc['mean']), std=list(dc['std']), threshold=0.5, top_k=3,
                checkpoint_reported='final (declared before training)', versions=software_versions(), notes=notes)


def export_weights(ctx: Any, model: nn.Module, folder: Path, recipe: str, register: Optional[str] = None,
                   manifest: Optional[str] = None, replace: bool = False) -> Dict[str, Any]:
    """Write ``model`` as a timm Hub folder with float16 weights, evaluated from pixels on the test split.

    The reported metrics are those of the shipped float16 weights loaded into a float32 model (what
    ``timm.create_model(..., pretrained=True)`` gives), computed with :class:`~srdl_timm.metrics.MultiLabelMetrics`
    on every test image; the written folder is loaded back through timm and checked to reproduce those logits.
    With ``register``, :func:`srdl_timm.hub.register_weights` copies the weights into ``weights/`` and lists them in
    the manifest (``manifest``, default the repository's) under that tag.

    Returns:
        ``{'folder', 'sha256', 'size_bytes', 'metrics', 'protocol', 'entry'}`` (``entry``: the manifest entry or None).

    Raises:
        FileExistsError: ``folder`` holds other files.
    """
    from srdl_timm import hub
    from srdl_timm.utils import sha256_file
    spec = ctx.spec
    shipped = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for tensor in list(shipped.parameters()) + list(shipped.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())  # exactly what loading the float16 file into float32 gives
    transform = create_paper_transform(ctx.data_config, is_training=False)
    test = spec.create(spec.test_split, transform)
    loader = create_multilabel_loader(test, 64, is_training=False, num_workers=ctx.cfg.workers)
    logits, targets = predict_logits(shipped, loader, torch.device('cpu'))
    metrics = metrics_from_logits(logits, targets, spec.label_names)
    protocol = _evaluation_protocol(
        ctx, spec.test_split, len(test), metrics['num_samples'],
        notes='float16 weights loaded into a float32 model, evaluated from the JPEG files (eval transform); '
              'training protocol in the recipe and benchmarks/offline_benchmark.md')
    report = {'metrics': {k: v for k, v in metrics.items() if k != 'per_class_AP'}, 'protocol': protocol,
              'label_names': spec.label_names, 'per_class_AP': metrics['per_class_AP']}
    half = copy.deepcopy(shipped).half()
    data_config = {k: ctx.data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std')}
    data_config.update(crop_pct=1.0, crop_mode='squash')
    description = ('SRDL (CAR + OE) trained on the offline Fashion Scenes benchmark by `benchmarks/run_offline.py`: a demo of '
                   'the method and of the package, not a general-purpose model.')
    folder.mkdir(parents=True, exist_ok=True)
    hub.save_pretrained_dir(half, folder, metrics=report, dataset=protocol['dataset'], license='apache-2.0',
                        recipe=recipe, data_config=data_config, description=description)
    # the folder must load through timm and reproduce the evaluated logits
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    images = torch.stack([test[i][0] for i in range(min(8, len(test)))])
    with torch.inference_mode():
        if not torch.allclose(reloaded(images), shipped(images), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f'{folder} does not reproduce the evaluated model when loaded through timm')
    entry = None
    if register:
        entry = hub.register_weights(
            folder, tag=register, dataset=protocol['dataset'], recipe=recipe,
            label_names_source='benchmarks.fashion_scenes.FASHION_SCENES_CLASSES (category-id order)',
            metrics=report, ship=True, manifest=manifest, replace=replace,
            notes='float16 weights; metrics on the Fashion Scenes test split, final checkpoint; '
                  'reproduce with the recipe command')
    weights = folder / hub.WEIGHTS_FILENAME
    return {'folder': str(folder), 'sha256': sha256_file(weights), 'size_bytes': weights.stat().st_size,
            'metrics': report['metrics'], 'per_class_AP': metrics['per_class_AP'], 'protocol': protocol,
            'entry': entry}
