"""Figures: mAP per row, the Figure 6 style sweeps, and Figure 5 style attention overlays."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

import numpy as np
import torch.nn as nn

from srdl_timm.data import create_paper_transform

from .config import METRIC_LABELS


def plot_table(table: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> None:
    """Bar chart of test mAP (both AP definitions, mean ± std over seeds) per row."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = list(table)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 4.2))
    for j, (metric, colour) in enumerate((('mAP_interpolated', '#1f77b4'), ('mAP_non_interpolated', '#ff7f0e'))):
        means = [table[k]['metrics'][metric]['mean'] for k in keys]
        stds = [table[k]['metrics'][metric]['std'] for k in keys]
        ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, color=colour,
               label=METRIC_LABELS[metric])
    lows = [table[k]['metrics']['mAP_non_interpolated']['mean'] for k in keys]
    ax.set_ylim(max(0.0, min(lows) - 10), min(100.0, max(t['metrics']['mAP_interpolated']['mean']
                                                           for t in table.values()) + 5))
    ax.set_xticks(x)
    ax.set_xticklabels([table[k]['name'].replace(' (', '\n(') for k in keys], fontsize=8)
    ax.set_ylabel('test mAP (%)')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: smallest mAP range (points) on the y axis of the sweep plots
_MIN_SWEEP_SPAN = 5.0


def plot_sweeps(sweeps: Mapping[str, Any], reference: Optional[Mapping[str, Any]], path: Path, title: str) -> None:
    """Figure 6 style: CAR + OE test mAP against top-K and against alpha, with CAR's mAP as a reference line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, param, label in ((axes[0], 'topk', 'oe_topk', 'topK (α = 0.5)'),
                                  (axes[1], 'alpha', 'oe_alpha', 'α (topK = 3)')):
        pts = sweeps[key]
        if pts:
            xs = [p[param] for p in pts]
            for metric, marker in (('mAP_interpolated', 'o'), ('mAP_non_interpolated', 's')):
                ax.errorbar(xs, [p[metric]['mean'] for p in pts], yerr=[p[metric]['std'] for p in pts],
                            marker=marker, capsize=3, label=METRIC_LABELS[metric])
            ax.set_xticks(xs)
        if reference is not None:
            ax.axhline(reference['metrics']['mAP_interpolated']['mean'], color='gray', ls='--', lw=1,
                       label='CAR without OE (interp.)')
        low, high = ax.get_ylim()
        if high - low < _MIN_SWEEP_SPAN:  # do not blow sub-point (within-noise) changes up to the full height
            middle = (low + high) / 2
            ax.set_ylim(middle - _MIN_SWEEP_SPAN / 2, middle + _MIN_SWEEP_SPAN / 2)
        ax.set_xlabel(label)
        ax.set_ylabel('test mAP (%)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def overlays(ctx: Any, model: nn.Module, count: int) -> List[str]:
    """Figure 5: SA maps of the top-3 categories (with the OE rectangle) on the first ``count`` test images that hold
    two or more classes, so the top-3 shows a present class besides the top-1 and a reader sees whether its map
    moves to its own object (issue #24)."""
    from PIL import Image
    from srdl_timm.data.images import open_image
    from srdl_timm.explain import explain, render_panel, save_explanation
    dataset = ctx.spec.create(ctx.spec.test_split)
    several = [i for i in range(len(dataset)) if (np.asarray(dataset.targets[i]) == 1).sum() >= 2]
    chosen = (several + [i for i in range(len(dataset)) if i not in set(several)])[:count]
    if not chosen:
        return []
    transform = create_paper_transform(ctx.data_config, is_training=False)
    paths = [dataset.image_paths[i] for i in chosen]
    images = [open_image(p) for p in paths]
    results = explain(model, images, topk=3, erase=True, transform=transform)
    out_dir = ctx.out / 'figure5'
    written, panels = [], []
    for i, (image, result, path) in enumerate(zip(images, results, paths)):
        truth = dataset.labels(chosen[i])
        stem = f'{i:02d}_{Path(path).stem}'
        written += save_explanation(image, result, out_dir, stem, erase=True)
        panels.append((render_panel(image, result, erase=True), truth))
    width = max(p.width for p, _ in panels)
    caption_h = 18
    grid = Image.new('RGB', (width, sum(p.height + caption_h for p, _ in panels)), (255, 255, 255))
    from PIL import ImageDraw
    draw = ImageDraw.Draw(grid)
    y = 0
    for panel, truth in panels:
        draw.text((4, y + 3), 'ground truth: ' + ', '.join(truth), fill=(0, 0, 0))
        grid.paste(panel, (0, y + caption_h))
        y += panel.height + caption_h
    grid_path = ctx.out / 'figure5_attention.png'
    grid.save(grid_path, format='PNG')
    return [str(grid_path)] + written
