"""What does object erasing (OE, §3.3) do to a trained SRDL model? (issue #22: "if OE gives nothing, find out why")

Loads a trained model (an ``srdl-train`` / ``run_offline.py --end-to-end`` run folder or weights file), runs it on
images of a COCO-format split with boxes (Fashion Scenes) and measures, for the K classes OE erases in each image
(the top-K by predicted score, exactly as training selects them through ``SRDL.forward_head_erasing``):

* **what is selected**: the share of erased classes that are present in the image (erasing an absent class's
  region changes what the loss asks of nothing that is there);
* **what is erased**: the erased rectangle's share of the grid, the share of a present class's box cells it covers,
  and the share of the rectangle that lies on that class's boxes;
* **what erasing changes**: the relative change of the category feature ``f_c`` (eq. 6 + GMP) and the drop of the
  logit, present and absent erased classes apart, and how many present erased classes are still predicted after
  erasing. Eq. 6 keeps ``0.5 F * CA`` at every position, so erasing SA leaves part of the object's evidence in place;
  the feature change says how much of it;
* **what the erased pass teaches**: gradients of ``L_ori`` (eq. 11) and ``L_era`` (eq. 12, ``era_scope`` 'all' and
  'erased') w.r.t. the backbone and the head, their norms and cosine similarity (averaged over mini-batches).
  ``L_era`` over all classes contains the unerased classes' ``L_ori`` terms again; the 'erased' scope isolates the
  part OE adds.

One JSON object on stdout (and ``--output``)::

    python benchmarks/oe_diagnosis.py --run benchmark-results/e2e/dataset-seed0/runs/car_oe-seed0-top3-alpha0.5 \\
        --root ~/.cache/srdl_timm/benchmark/fashion_scenes-quick-seed0 --split train --images 256
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timm.data import resolve_data_config  # noqa: E402

from srdl_timm.cli import add_common_args, run_cli  # noqa: E402
from srdl_timm.data import create_multilabel_dataset, create_multilabel_loader, create_paper_transform  # noqa: E402
from srdl_timm.errors import InputError  # noqa: E402
from srdl_timm.layers.oe import erase_region  # noqa: E402
from srdl_timm.loading import load_model  # noqa: E402
from srdl_timm.loss import SRDLLoss  # noqa: E402
from srdl_timm.utils import atomic_write_json  # noqa: E402

from benchmarks.offline.attention_stats import box_cells  # noqa: E402
from benchmarks.offline.stats import load_boxes  # noqa: E402

PROG = 'benchmarks/oe_diagnosis.py'


def _weights(run: str) -> str:
    path = Path(run)
    if path.is_dir():
        path = path / 'model.safetensors'
    if not path.is_file():
        raise InputError(f'{run}: no model.safetensors (give an srdl-train run folder or its weights file)')
    return str(path)


def erasure_statistics(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                       boxes: Sequence[Dict[int, Any]]) -> Dict[str, List[float]]:
    """Per erased (image, class): presence, erased area, box coverage, feature change and logit drop."""
    model.eval()
    with torch.no_grad():
        feat_map = model.forward_features(images)
        h, w = feat_map.shape[-2:]
        erasing = model.forward_erasing(feat_map)  # the training OE pass (eval mode: dropout off)
        logits, features, erased_logits = erasing['logits'], erasing['features'], erasing['erased_logits']
        index, erased_features = erasing['class_index'], erasing['erased_features']
        selected = torch.gather(erasing['sa'], 1, index.unsqueeze(-1).expand(-1, -1, h * w)).unflatten(-1, (h, w))
        masks = erase_region(selected, model.object_eraser.alpha)  # the rectangle ObjectErasing zeroed
    out: Dict[str, List[float]] = {k: [] for k in (
        'present', 'area', 'box_covered', 'on_box', 'feature_change', 'logit_drop', 'still_positive')}
    for b in range(images.shape[0]):
        width, height = boxes[b][-1][0][2], boxes[b][-1][0][3]
        for j, c in enumerate(index[b].tolist()):
            mask = masks[b, j].numpy()
            present = bool(targets[b, c] == 1)
            out['present'].append(float(present))
            out['area'].append(float(mask.mean()))
            base = features[b, c]
            out['feature_change'].append(float((erased_features[b, j] - base).norm() / base.norm().clamp(min=1e-12)))
            out['logit_drop'].append(float(logits[b, c] - erased_logits[b, c]))
            out['still_positive'].append(float(erased_logits[b, c] > 0) if present else float('nan'))
            if present and c in boxes[b] and mask.any():
                cells = box_cells(boxes[b][c], width, height, h, w)
                out['box_covered'].append(float((cells & mask).sum() / max(cells.sum(), 1)))
                out['on_box'].append(float((cells & mask).sum() / mask.sum()))
    return out


def _flat_grad(params: List[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def gradient_statistics(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """Norms and cosine of the gradients of L_ori and of L_era (scope 'all' and 'erased') on backbone and head."""
    topk = model.object_eraser.topk
    groups = {'backbone': [p for p in model.backbone.parameters() if p.requires_grad],
              'head': [p for n, p in model.named_parameters() if not n.startswith('backbone.') and p.requires_grad]}
    grads: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, term in (('ori', None), ('era_all', 'all'), ('era_erased', 'erased')):
        model.zero_grad(set_to_none=True)
        feat_map = model.forward_features(images)  # BatchNorm on running statistics (eval mode), as a fair probe
        logits, erased = model.forward_head_erasing(feat_map)
        if term is None:
            loss = SRDLLoss()(logits, targets)
        else:
            loss = SRDLLoss(era_scope=term, topk=topk).erased_term(logits, erased, targets)
        loss.backward()
        grads[name] = {g: _flat_grad(ps).clone() for g, ps in groups.items()}
    model.zero_grad(set_to_none=True)
    out: Dict[str, float] = {}
    for g in groups:
        o = grads['ori'][g]
        for name in ('era_all', 'era_erased'):
            e = grads[name][g]
            out[f'{g}_{name}_norm_ratio'] = float(e.norm() / o.norm().clamp(min=1e-20))
            out[f'{g}_{name}_cosine'] = float(torch.nn.functional.cosine_similarity(e, o, dim=0))
    return out


def _mean(values: Sequence[float]) -> Optional[float]:
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    return float(v.mean()) if len(v) else None


def diagnose(run: str, root: str, split: str = 'train', images: int = 256, batch_size: int = 32,
             seed: int = 0, workers: int = 2) -> Dict[str, Any]:
    """The statistics of the module docstring for the model of ``run`` on the first ``images`` images of ``split``."""
    torch.manual_seed(seed)
    weights = _weights(run)
    model = load_model(None, weights)
    if not getattr(model, 'use_sa', False):
        raise InputError(f'{weights}: the model has no spatial attention, so OE has nothing to erase')
    config = resolve_data_config({}, model=model)
    train_config = Path(weights).parent / 'train_config.json'
    size = json.loads(train_config.read_text())['img_size'] if train_config.is_file() else config['input_size'][-1]
    transform = create_paper_transform(config, is_training=False, size=int(size))
    dataset = create_multilabel_dataset('coco-json', root, split, transform=transform)
    boxes = load_boxes(dataset)
    if boxes is None:
        raise InputError(f'{root}: the {split} split has no COCO boxes; OE diagnosis needs them')
    subset = torch.utils.data.Subset(dataset, range(min(images, len(dataset))))
    loader = create_multilabel_loader(subset, batch_size, is_training=False, num_workers=workers,
                                      persistent_workers=False)
    erasure: Dict[str, List[float]] = {}
    gradients: List[Dict[str, float]] = []
    start = 0
    for x, y in loader:
        stats = erasure_statistics(model, x, y, boxes[start:start + len(x)])
        for k, v in stats.items():
            erasure.setdefault(k, []).extend(v)
        gradients.append(gradient_statistics(model, x, y))
        start += len(x)
    present = np.asarray(erasure['present'], dtype=bool)
    drops = np.asarray(erasure['logit_drop'])
    changes = np.asarray(erasure['feature_change'])
    return {
        'run': str(Path(weights).parent), 'split': split, 'images': start, 'topk': model.object_eraser.topk,
        'alpha': model.object_eraser.alpha, 'erased_pairs': int(len(present)),
        'share_erased_present': float(present.mean()),
        'erased_area_mean': _mean(erasure['area']),
        'present_box_covered_mean': _mean(erasure['box_covered']),
        'erased_on_own_box_mean': _mean(erasure['on_box']),
        'feature_change_present': _mean(changes[present]), 'feature_change_absent': _mean(changes[~present]),
        'logit_drop_present': _mean(drops[present]), 'logit_drop_absent': _mean(drops[~present]),
        'present_still_positive': _mean(erasure['still_positive']),
        'gradients': {k: float(np.mean([g[k] for g in gradients])) for k in gradients[0]},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description='What object erasing does to a trained SRDL model.')
    p.add_argument('--run', required=True, help='srdl-train run folder (or its model.safetensors)')
    p.add_argument('--root', required=True, help='COCO-format dataset folder with boxes (Fashion Scenes)')
    p.add_argument('--split', default='train')
    p.add_argument('--images', type=int, default=256)
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('-j', '--workers', type=int, default=2, help='data loading processes')
    p.add_argument('--output', default=None, help='also write the JSON here')
    return add_common_args(p)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = diagnose(args.run, args.root, args.split, args.images, args.batch_size, workers=args.workers)
    print(json.dumps(result, indent=2))
    if args.output:
        atomic_write_json(args.output, result)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(PROG, build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
