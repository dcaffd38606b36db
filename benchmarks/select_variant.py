#!/usr/bin/env python
"""Choose among SRDL's attention variants on the validation split only (issue #28).

For each benchmark folder (``run_offline.py --end-to-end`` output, one variant row each, same data set and seed),
the trained model is loaded from its run folder and its spatial-attention maps are measured on the **validation**
images (the same statistics the benchmark reports on test: pointing game, class-discriminative pointing game,
correlation of two classes' maps; ``benchmarks/offline/attention_stats.py``), beside the run's validation mAP.
The test split is not read. The rule, fixed before the variants' validation numbers were read:

1. a variant *meets the map targets* when, on validation, the mean correlation of two present classes' maps in one
   image is <= 0.5, the class-discriminative rate is >= 15 points above its shared-map value, and the pointing
   game is >= 2x its chance;
2. among the variants that meet them, the highest validation mAP (interpolated) wins; if none meets them all,
   the one meeting most, then the highest validation mAP.

    python benchmarks/select_variant.py OUT_GATED OUT_SOFTMAX OUT_SOFTMAX_GATED --output chosen_variant.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` is a package
from benchmarks.offline.attention_stats import attention_statistics  # noqa: E402
from benchmarks.offline.config import MAX_POINTING_IMAGES  # noqa: E402
from benchmarks.offline.stats import load_boxes  # noqa: E402
from srdl_timm.data import create_multilabel_dataset, create_multilabel_loader  # noqa: E402
from srdl_timm.data.transforms import create_paper_transform  # noqa: E402
from srdl_timm.loading import load_model  # noqa: E402

TARGETS = dict(max_correlation=0.5, min_discriminative_gain=15.0, min_pointing_over_chance=2.0)


def validation_maps(run: Dict[str, Any], data_root: str) -> Dict[str, Any]:
    """Attention statistics of one benchmark run's model on the validation split (up to MAX_POINTING_IMAGES)."""
    cfg = run['config']
    model = load_model(None, cfg['model_path'])
    data_config = dict(input_size=tuple(cfg['input_size']), interpolation=cfg['interpolation'], mean=cfg['mean'],
                       std=cfg['std'])
    dataset = create_multilabel_dataset('coco-json', data_root, 'val',
                                        transform=create_paper_transform(data_config, is_training=False))
    count = min(len(dataset), MAX_POINTING_IMAGES)
    loader = create_multilabel_loader(torch.utils.data.Subset(dataset, range(count)), 32, is_training=False,
                                      num_workers=0)
    maps, targets = [], []
    with torch.inference_mode():
        for images, labels in loader:
            maps.append(model.attention_maps(images)['spatial_attention'].float().numpy())
            targets.append(labels.numpy())
    boxes = load_boxes(dataset)
    return attention_statistics(np.concatenate(maps), np.concatenate(targets), None if boxes is None else boxes[:count])


def meets(stats: Dict[str, Any]) -> Dict[str, bool]:
    """Which of the issue's map targets a variant's validation statistics meet."""
    disc = stats.get('discriminative', {})
    return {
        'correlation': stats['similarity']['same_image_corr'] <= TARGETS['max_correlation'],
        'discriminative': disc.get('rate', float('nan')) - disc.get('same_map', float('nan'))
        >= TARGETS['min_discriminative_gain'],
        'pointing': stats.get('hit_rate', float('nan')) >= TARGETS['min_pointing_over_chance'] * stats.get(
            'chance', float('nan')),
    }


def pick(candidates: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Rule 2: the most targets met, then the highest validation mAP."""
    return max(candidates, key=lambda c: (c['met_count'], c['val_mAP']))


def choose(folders: Sequence[str]) -> Dict[str, Any]:
    """The rule of the module docstring over benchmark folders; returns every candidate and the choice."""
    candidates: List[Dict[str, Any]] = []
    for folder in folders:
        result = json.loads((Path(folder) / 'results.json').read_text())
        for run in result['runs']:
            stats = validation_maps(run, result['data']['root'])
            met = meets(stats)
            candidates.append(dict(folder=str(folder), row=run['row'], seed=run['seed'],
                                   attention=run['config'].get('attention', 'paper'),
                                   val_mAP=run['val']['mAP_interpolated'], val_maps=stats, met=met,
                                   met_count=sum(met.values())))
    best = pick(candidates)
    return dict(rule=__doc__.split('The rule')[1].split('    python')[0].strip(), targets=TARGETS,
                candidates=candidates, chosen=best['row'], chosen_attention=best['attention'])


def to_markdown(choice: Dict[str, Any]) -> str:
    lines = ['| row | val mAP | val corr. same image | val discr. rate (shared-map) | val pointing (chance) | '
             'targets met |', '|---|---|---|---|---|---|']
    for c in choice['candidates']:
        s, d = c['val_maps'], c['val_maps'].get('discriminative', {})
        lines.append(f"| {c['row']}{' (chosen)' if c['row'] == choice['chosen'] else ''} | {c['val_mAP']:.2f} | "
                     f"{s['similarity']['same_image_corr']:.2f} | {d.get('rate', float('nan')):.1f} "
                     f"({d.get('same_map', float('nan')):.1f}) | {s.get('hit_rate', float('nan')):.1f} "
                     f"({s.get('chance', float('nan')):.1f}) | {c['met_count']}/3 |")
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('folders', nargs='+', help='benchmark output folders, one variant each')
    p.add_argument('--output', help='write the candidates and the choice here (JSON)')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    choice = choose(args.folders)
    print(to_markdown(choice))
    print(f"chosen: {choice['chosen']} (attention={choice['chosen_attention']})")
    if args.output:
        Path(args.output).write_text(json.dumps(choice, indent=2, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
