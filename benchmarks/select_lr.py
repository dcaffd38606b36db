"""Choose each row's learning rate on the validation split: the same grid and budget for every head.

Run the grid as one benchmark invocation per learning rate (same rows, seeds and data set; only ``--lr`` differs),
then pick, per row, the learning rate with the best mean validation mAP (interpolated) over the seeds::

    for lr in 3e-4 1e-3 3e-3; do
      python benchmarks/run_offline.py --end-to-end --dataset-seeds 0 --seeds 0 --lr $lr \\
          --rows baseline car car_oe ml_decoder ml_decoder_asl csra --output benchmark-results/lr-grid/lr-$lr
    done
    python benchmarks/select_lr.py benchmark-results/lr-grid/lr-* --output benchmark-results/lr-grid/chosen.json
    python benchmarks/run_offline.py --end-to-end --row-lr-from benchmark-results/lr-grid/chosen.json ...

The test split is not read. A row whose best validation mAP stays within ``--untrained-margin`` points of the
label-frequency floor at every learning rate is reported as not training at any rate of the grid (a diagnosis,
not a row of zeros).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

METRIC = 'mAP_interpolated'


def collect(folders: Sequence[str]) -> Dict[str, Dict[float, List[float]]]:
    """``row -> lr -> [validation mAP of each seed]`` from the ``results.json`` of benchmark folders.

    Raises:
        ValueError: a folder without a readable ``results.json``, or a run without validation metrics.
    """
    table: Dict[str, Dict[float, List[float]]] = defaultdict(lambda: defaultdict(list))
    for folder in folders:
        path = Path(folder) / 'results.json'
        try:
            runs = json.loads(path.read_text())['runs']
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f'{path}: no benchmark results ({e})') from e
        for run in runs:
            if run.get('purpose') != 'table':
                continue
            if not run.get('val'):
                raise ValueError(f'{path}: run {run["row"]} seed {run["seed"]} has no validation metrics')
            table[run['row']][float(run['config']['lr'])].append(float(run['val'][METRIC]))
    return table


def choose(table: Dict[str, Dict[float, List[float]]], floor: Optional[float] = None,
           untrained_margin: float = 3.0) -> Dict[str, Any]:
    """Per row, the learning rate of the best mean validation mAP (ties: the smaller rate), with the grid's
    values and, where ``floor`` (the validation mAP of a constant predictor) is given, the rows that never train."""
    chosen: Dict[str, float] = {}
    grid: Dict[str, Dict[str, float]] = {}
    untrained: List[str] = []
    for row, by_lr in table.items():
        means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
        best = max(sorted(means), key=lambda lr: means[lr])
        chosen[row] = best
        grid[row] = {f'{lr:g}': round(m, 2) for lr, m in sorted(means.items())}
        if floor is not None and means[best] < floor + untrained_margin:
            untrained.append(row)
    return {'metric': f'val {METRIC} (mean over seeds)', 'chosen': chosen, 'grid': grid, 'untrained': untrained}


def to_markdown(selection: Dict[str, Any]) -> str:
    """The grid as a table: one line per row, one column per learning rate, the chosen one in bold."""
    lrs = sorted({lr for g in selection['grid'].values() for lr in g}, key=float)
    lines = [f'| row | {" | ".join("lr " + lr for lr in lrs)} | chosen |', '|---' * (len(lrs) + 2) + '|']
    for row, g in selection['grid'].items():
        best = f'{selection["chosen"][row]:g}'
        cells = [('**%.2f**' if lr == best else '%.2f') % g[lr] if lr in g else '—' for lr in lrs]
        lines.append(f'| {row} | {" | ".join(cells)} | {best} |')
    if selection['untrained']:
        lines.append(f'\nNot training at any learning rate of the grid: {", ".join(selection["untrained"])}')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status 0, or 2 with one line naming the folder at fault."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('folders', nargs='+', help='benchmark output folders, one per learning rate')
    p.add_argument('--output', default=None, help='write the selection as JSON (for run_offline.py --row-lr-from)')
    p.add_argument('--floor', type=float, default=None,
                   help='validation mAP of a constant predictor (label frequency), to flag rows that never train')
    p.add_argument('--untrained-margin', type=float, default=3.0)
    args = p.parse_args(argv)
    try:
        selection = choose(collect(args.folders), args.floor, args.untrained_margin)
    except ValueError as e:
        print(f'select_lr.py: error: {e}', file=sys.stderr)
        return 2
    print(to_markdown(selection))
    if args.output:
        Path(args.output).write_text(json.dumps(selection, indent=2) + '\n')
        print(f'written: {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
