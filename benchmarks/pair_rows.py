#!/usr/bin/env python
"""Two rows trained in separate benchmark invocations, paired by data set and seed: means, the seed-aware interval
of their test-mAP difference, and their attention statistics.

``run_offline.py --compare`` pairs one row across two invocations; this pairs two *rows* (e.g. a head with and
without OE) whose runs lie in any number of output folders (one row, seed and data set each, as the evidence runs
of ``offline_benchmark.md`` are started). Runs are grouped by data set (its root folder in results.json); within a
data set the seeds both rows have are paired, their test images checked to be the same, and the difference b - a
gets the hierarchical bootstrap over training seeds and test images (:func:`benchmarks.offline.stats.
hierarchical_bootstrap`).

    python benchmarks/pair_rows.py --a car_gated --b car_gated_oe OUT1 OUT2 ... [--json pairs.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` is a package
from benchmarks.offline.report import _paired_test_logits  # noqa: E402
from benchmarks.offline.stats import hierarchical_bootstrap, summarize  # noqa: E402

#: attention statistics averaged per row: (label, path in the run's ``pointing_game`` entry)
MAP_STATS = (('pointing', ('hit_rate',)), ('chance', ('chance',)), ('discriminative', ('discriminative', 'rate')),
             ('shared_map', ('discriminative', 'same_map')), ('corr_same', ('similarity', 'same_image_corr')))


def load_runs(folders: Sequence[str]) -> Dict[Tuple[str, str, int], Dict[str, Any]]:
    """``(data root, row, seed) -> run`` (with ``folder`` added) from the results.json of each folder."""
    runs = {}
    for folder in folders:
        path = Path(folder) / 'results.json'
        if not path.is_file():
            raise SystemExit(f'{folder}: no results.json here (not a finished benchmark output folder)')
        report = json.loads(path.read_text(encoding='utf-8'))
        for run in report['runs']:
            if run.get('purpose', 'table') == 'table':
                runs[(report['data']['root'], run['row'], run['seed'])] = dict(run, folder=str(folder))
    return runs


def _stat(run: Dict[str, Any], path: Sequence[str]) -> float:
    value: Any = run.get('pointing_game') or {}
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return float(value) if isinstance(value, (int, float)) else float('nan')


def _mean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN if none is)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float('nan')


def pair(runs: Dict[Tuple[str, str, int], Dict[str, Any]], row_a: str, row_b: str, num_resamples: int
         ) -> List[Dict[str, Any]]:
    """Per data set: each row's test/val mAP and map statistics over its seeds, and the paired difference b - a."""
    by_data: Dict[str, Dict[str, Dict[int, Dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for (root, row, seed), run in runs.items():
        if row in (row_a, row_b):
            by_data[root][row][seed] = run
    out = []
    for root, rows in sorted(by_data.items()):
        entry: Dict[str, Any] = {'data': root}
        for side, row in (('a', row_a), ('b', row_b)):
            seeds = sorted(rows.get(row, {}))
            entry[side] = {'row': row, 'seeds': seeds,
                           'test_mAP': summarize([rows[row][s]['test']['mAP_interpolated'] for s in seeds])
                           if seeds else None,
                           'val_mAP': summarize([rows[row][s]['val']['mAP_interpolated'] for s in seeds])
                           if seeds else None,
                           **{name: _mean([_stat(rows[row][s], path) for s in seeds]) for name, path in MAP_STATS}}
        common = sorted(set(rows.get(row_a, {})) & set(rows.get(row_b, {})))
        entry['paired_seeds'] = common
        if common:
            files = [(Path(rows[row_a][s]['folder']) / rows[row_a][s]['logits_file'],
                      Path(rows[row_b][s]['folder']) / rows[row_b][s]['logits_file']) for s in common]
            la, lb, targets = _paired_test_logits(files)
            entry['difference'] = hierarchical_bootstrap(lb, la, targets, num_resamples=num_resamples)
        out.append(entry)
    return out


def to_markdown(pairs: Sequence[Dict[str, Any]]) -> str:
    lines = ['| data set | row | seeds | test mAP | val mAP | pointing (chance) | discr. (shared map) | corr. same image |',
             '|---|---|---|---|---|---|---|---|']
    for p in pairs:
        for side in ('a', 'b'):
            s = p[side]
            if not s['seeds']:
                continue
            lines.append(f"| {Path(p['data']).name} | {s['row']} | {','.join(map(str, s['seeds']))} | "
                         f"{s['test_mAP']['mean']:.2f} ± {s['test_mAP']['std']:.2f} | "
                         f"{s['val_mAP']['mean']:.2f} ± {s['val_mAP']['std']:.2f} | {s['pointing']:.1f} "
                         f"({s['chance']:.1f}) | {s['discriminative']:.1f} ({s['shared_map']:.1f}) | "
                         f"{s['corr_same']:.2f} |")
        if p.get('difference'):
            d = p['difference']
            lines.append(f"| {Path(p['data']).name} | **{p['b']['row']} − {p['a']['row']}** | "
                         f"{','.join(map(str, p['paired_seeds']))} | **{d['diff']:+.2f} [{d.get('ci_low', float('nan')):+.2f}, "
                         f"{d.get('ci_high', float('nan')):+.2f}]** | | | | |")
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('folders', nargs='+', help='benchmark output folders')
    p.add_argument('--a', required=True, help='row a')
    p.add_argument('--b', required=True, help='row b (the difference is b - a)')
    p.add_argument('--bootstrap', type=int, default=1000, help='resamples of the hierarchical bootstrap')
    p.add_argument('--json', help='write the pairs here')
    args = p.parse_args(argv)
    pairs = pair(load_runs(args.folders), args.a, args.b, args.bootstrap)
    print(to_markdown(pairs))
    if args.json:
        Path(args.json).write_text(json.dumps(pairs, indent=2, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
