"""Aggregation over seeds and the markdown report: tables, paired-bootstrap comparisons, pointing game, sweeps."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from srdl_timm.loss import ASL_DEFAULTS

from .config import (DEFAULT_OE_ALPHA, DEFAULT_OE_TOPK, METRIC_LABELS, PEER_ROWS, ROW_ORDER, ROWS, SCALAR_METRICS,
                     TABLE2_METRICS, TABLE_METRICS, BenchmarkConfig)
from .data import DataSpec
from .runs import RunResult
from .stats import hierarchical_bootstrap, summarize

#: rare classes get their own per-class AP table: train frequency below this
RARE_FREQUENCY = 0.1


def _mean_or_nan(values: Sequence[Optional[float]]) -> float:
    """Mean of per-seed values; None (a NaN read back from JSON: no positive in the split) stays NaN."""
    return float(np.mean([math.nan if v is None else v for v in values]))


def table_rows(runs: Sequence[RunResult], cfg: BenchmarkConfig) -> Dict[str, Dict[str, Any]]:
    """Per row: mean ± std over seeds of every scalar metric, mean per-class AP, and the pointing game."""
    table: Dict[str, Dict[str, Any]] = {}
    for key in (r for r in ROW_ORDER if r in cfg.rows):
        chosen = [r for r in runs if r.row == key and r.purpose == 'table']
        if not chosen:
            continue
        table[key] = {'name': ROWS[key].name, 'paper': ROWS[key].paper, 'seeds': [r.seed for r in chosen],
                      'metrics': {m: summarize([r.test[m] for r in chosen]) for m in SCALAR_METRICS},
                      'per_class_AP': {mode: {c: _mean_or_nan([r.test['per_class_AP'][mode][c] for r in chosen])
                                              for c in chosen[0].test['per_class_AP'][mode]}
                                       for mode in ('interpolated', 'non_interpolated')}}
        games = [r.pointing_game for r in chosen if r.pointing_game and r.pointing_game.get('num_pairs')]
        if games:
            table[key]['pointing_game'] = {'hit_rate': summarize([g['hit_rate'] for g in games]),
                                           'chance': float(np.mean([g['chance'] for g in games])),
                                           'num_pairs': games[0]['num_pairs'],
                                           'sa_mean': float(np.mean([g['sa_mean'] for g in games])),
                                           'sa_peak_to_peak': float(np.mean([g['sa_peak_to_peak'] for g in games]))}
        for part, keys in (('discriminative', ('rate', 'own_rate', 'chance', 'same_map', 'same_map_bound')),
                           ('similarity', ('same_image_corr', 'other_image_corr', 'same_image_top_iou',
                                           'other_image_top_iou'))):
            found = [r.pointing_game[part] for r in chosen if r.pointing_game and r.pointing_game.get(part)]
            if found:
                table[key][part] = {k: summarize([_nan(f[k]) for f in found]) for k in keys}
                table[key][part]['count'] = found[0].get('num_pairs')
    return table


def _nan(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def _fmt_cell(stat: Mapping[str, Any]) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat['n'] > 1 else f"{stat['mean']:.2f}"


def format_table(table: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS,
                 reference: Optional[str] = 'baseline', switches: bool = True) -> str:
    """Markdown table: one line per row with mean ± std over seeds (percent), switches and the change of the first
    metric against ``reference``."""
    heads = ['Line', 'Method']
    if switches:
        heads += ['GCN', 'CA', 'SA', 'OE']
    heads += [METRIC_LABELS.get(m, m) for m in metrics]
    if reference in table:
        heads.append(f'Δ {METRIC_LABELS.get(metrics[0], metrics[0])} vs baseline')
    lines = ['| ' + ' | '.join(heads) + ' |', '|' + '---|' * len(heads)]
    ref = table.get(reference)
    for i, (key, entry) in enumerate(table.items(), start=1):
        row = ROWS[key]
        car = row.use_ca or row.use_sa
        cells = [str(i), entry['name']]
        if switches:
            cells += ['✓' if car and row.use_gcn else '', '✓' if row.use_ca else '', '✓' if row.use_sa else '',
                      '✓' if row.oe else '']
        cells += [_fmt_cell(entry['metrics'][m]) for m in metrics]
        if ref is not None:
            delta = entry['metrics'][metrics[0]]['mean'] - ref['metrics'][metrics[0]]['mean']
            cells.append('—' if key == reference else f'{delta:+.2f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


#: paired comparisons (a - b) reported when both rows ran: SRDL's ablations, the L_era scope, SRDL against each peer
COMPARISONS = (('car', 'baseline'), ('car_oe', 'car'), ('car_oe', 'baseline'), ('car', 'car_no_gcn'),
               ('car', 'car_no_ca'), ('car', 'car_no_sa'), ('car_oe_erased', 'car_oe'), ('car_oe_erased', 'car'),
               *((a, p) for p in PEER_ROWS for a in ('car_oe', 'car')))


def _paired_test_logits(files: Sequence[Tuple[Path, Path]]) -> Tuple[List[np.ndarray], List[np.ndarray], np.ndarray]:
    """Test logits of two sides, run by run (``files``: pairs of logits files), and the test targets, which must be
    the same in every file (ValueError naming the files otherwise)."""
    la, lb, targets = [], [], None
    for file_a, file_b in files:
        da, db = np.load(file_a), np.load(file_b)
        for d, file in ((da, file_a), (db, file_b)):
            if targets is not None and not np.array_equal(d['test_targets'], targets):
                raise ValueError(f'{file} holds the logits of other test images than {files[0][0]}; compare runs on '
                                 'the same data set')
            targets = d['test_targets']
        la.append(da['test_logits'])
        lb.append(db['test_logits'])
    return la, lb, targets


def comparisons(runs: Sequence[RunResult], out: Path, num_resamples: int) -> List[Dict[str, Any]]:
    """Hierarchical bootstrap (training seeds and test images, :func:`.stats.hierarchical_bootstrap`) of the mAP
    difference for every pair of :data:`COMPARISONS` that ran (common seeds)."""
    by_key: Dict[Tuple[str, int], RunResult] = {(r.row, r.seed): r for r in runs if r.purpose == 'table'}
    results = []
    for a, b in COMPARISONS:
        seeds = sorted(s for (row, s) in by_key if row == a and (b, s) in by_key)
        if not seeds:
            continue
        la, lb, targets = _paired_test_logits([(out / by_key[(a, s)].logits_file, out / by_key[(b, s)].logits_file)
                                               for s in seeds])
        entry = {'a': a, 'b': b, 'seeds': seeds}
        for mode in ('interpolated', 'non_interpolated'):
            entry[mode] = hierarchical_bootstrap(la, lb, targets, num_resamples=num_resamples, mode=mode)
        results.append(entry)
    return results


def interval_verdict(interval: Mapping[str, Any], first: str, second: str,
                     margin: Optional[float] = None) -> str:
    """What the 95% interval of ``first − second`` says: ``first > second`` or ``first < second`` where it
    excludes 0; with a non-inferiority ``margin`` (mAP points, fixed before the runs), ``first not worse than
    second by margin`` where its low end lies above ``−margin``; else ``not resolved`` (``—``: no resample)."""
    if not interval.get('resamples'):
        return '—'
    low, high = interval['ci_low'], interval['ci_high']
    if low > 0:
        return f'{first} > {second}'
    if high < 0:
        return f'{first} < {second}'
    if margin is not None and low > -margin:
        return f'{first} not worse than {second} by {margin:g}'
    return 'not resolved'


def _format_comparisons(entries: Sequence[Mapping[str, Any]]) -> str:
    lines = ['| Comparison | Δ mAP (interp.) | 95% interval | per seed | Δ mAP (non-interp.) | 95% interval | verdict |',
             '|---|---|---|---|---|---|---|']
    for c in entries:
        i, n = c['interpolated'], c['non_interpolated']
        per_seed = ', '.join(f'{v:+.2f}' for v in i.get('per_seed', []))
        verdict = interval_verdict(i, 'a', 'b')
        lines.append(f"| {ROWS[c['a']].name} − {ROWS[c['b']].name} | {i['diff']:+.2f} | "
                     f"[{i['ci_low']:+.2f}, {i['ci_high']:+.2f}] | {per_seed} | {n['diff']:+.2f} | "
                     f"[{n['ci_low']:+.2f}, {n['ci_high']:+.2f}] | {verdict} |")
    return '\n'.join(lines)


def format_per_class(table: Mapping[str, Mapping[str, Any]], frequency: Mapping[str, float],
                     mode: str = 'interpolated') -> str:
    """Markdown: per-class AP (percent, mean over seeds) of every row, classes sorted by training frequency (rare
    first); '—' where the test split has no positive of the class."""
    keys = list(table)
    names = sorted(frequency, key=lambda c: frequency[c])
    lines = ['| class | train frequency | ' + ' | '.join(table[k]['name'] for k in keys) + ' |',
             '|---|---|' + '---|' * len(keys)]
    for c in names:
        rare = ' (rare)' if frequency[c] < RARE_FREQUENCY else ''
        values = [table[k]['per_class_AP'][mode][c] for k in keys]
        lines.append(f'| {c}{rare} | {frequency[c]:.3f} | ' + ' | '.join(
            '—' if v is None or not math.isfinite(v) else f'{v:.1f}' for v in values) + ' |')
    return '\n'.join(lines)


def sweep_summary(runs: Sequence[RunResult], cfg: BenchmarkConfig) -> Dict[str, Any]:
    """Figure 6 points: CAR + OE mAP per top-K (alpha fixed) and per alpha (top-K fixed)."""
    def points(param: str, values: Sequence[Any], fixed: Tuple[str, Any]) -> List[Dict[str, Any]]:
        out = []
        for v in values:
            chosen = [r for r in runs if r.row == 'car_oe' and r.seed in cfg.sweep_seeds
                      and math.isclose(getattr(r, param), v) and math.isclose(getattr(r, fixed[0]), fixed[1])]
            if chosen:
                out.append({param: v, 'seeds': [r.seed for r in chosen],
                            **{m: summarize([r.test[m] for r in chosen]) for m in TABLE_METRICS}})
        return out
    return {'topk': points('oe_topk', cfg.sweep_topk, ('oe_alpha', DEFAULT_OE_ALPHA)),
            'alpha': points('oe_alpha', cfg.sweep_alpha, ('oe_topk', DEFAULT_OE_TOPK))}


def title(cfg: BenchmarkConfig, spec: DataSpec) -> str:
    """One-line title of a report."""
    if spec.source == 'fashion-scenes':
        return f"Fashion Scenes ({cfg.preset} preset, dataset seed {cfg.dataset_seed}), {cfg.mode} protocol"
    return f"{spec.info['name']}, paper recipe"


def protocol_text(cfg: BenchmarkConfig, spec: DataSpec, ctx: Any) -> str:
    """The protocol in one paragraph (data, model, trainer, optimiser, reporting)."""
    size = ctx.data_config['input_size'][-1] if ctx.data_config else cfg.img_size
    n = spec.info.get('num_images', {})
    parts = [f"{spec.info['name']} at `{spec.root}`: train {n.get(spec.train_split, '?')} / "
             f"{'val ' + str(n.get(spec.val_split, '?')) + ' / ' if spec.val_split != spec.test_split else ''}"
             f"test {n.get(spec.test_split, '?')} images ({spec.test_split} split reported), {len(spec.label_names)} classes."]
    if cfg.trainer == 'frozen-trunk':
        grid = 'x'.join(map(str, ctx.feature_grid)) if getattr(ctx, 'feature_grid', None) else '?'
        bn = ('BatchNorm on running statistics' if cfg.batchnorm == 'frozen' else
              'BatchNorm of the trained units on batch statistics')
        parts.append(f'{cfg.model} with ImageNet backbone (output stride {cfg.output_stride or 32}), {size} px: '
                     f'a {grid} feature grid for the attention; no augmentation; backbone frozen except its last '
                     f'{cfg.train_stages} unit(s), {bn}, frozen part cached; AdamW lr '
                     f'{cfg.lr:g}, weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, {cfg.epochs} epochs '
                     f'(warm-up {cfg.warmup_epochs:g} epoch + cosine); every row (SRDL and peers) the same.')
    else:
        grid = 'x'.join(map(str, ctx.feature_grid)) if getattr(ctx, 'feature_grid', None) else '?'
        parts.append(f'{cfg.model} with ImageNet backbone (output stride {cfg.output_stride or 32}), every row (SRDL '
                     'and peers) trained end to end by srdl_timm.training.fit (srdl-train\'s loop) '
                     + ('(--recipe paper)' if cfg.mode == 'paper' else
                        f'({cfg.optimizer} lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, '
                        f'{cfg.epochs} epochs, {cfg.warmup_epochs:g} warm-up epoch(s) + cosine, the paper\'s '
                        'augmentation scaled to the input size)') + f', {size} px: a {grid} feature grid.')
    loss = 'binary cross-entropy (the paper\'s)' if cfg.loss == 'bce' else (
        'the asymmetric loss (ASL: ' + ', '.join(f'{k} {v:g}' for k, v in ASL_DEFAULTS.items()) + ', the ASL paper\'s)')
    parts.append(f'OE top-K {cfg.oe_topk}, α {cfg.oe_alpha:g}; every row trained with {loss} (L_ori, and L_era '
                 f'with OE), the loss terms reduced by their {cfg.loss_reduction}. '
                 'Final checkpoint (declared in advance); '
                 f'mean ± sample std over seeds {list(cfg.seeds)}; metrics in percent.')
    return ' '.join(parts)


def _attention_sections(table: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Markdown: is SA category-specific (class-discriminative pointing game, map similarity), per row."""
    lines: List[str] = []
    rows = {k: v for k, v in table.items() if v.get('discriminative')}
    if rows:
        first = next(iter(rows.values()))['discriminative']
        lines += ['', f"## Is SA category-specific? Class-discriminative pointing game ({first['count']} present "
                      'classes on images with >= 2 classes whose boxes cover disjoint grid cells)', '',
                  'rate: of the peaks that lie on a present object, the share on the object of their own class; '
                  'chance: a random cell; same map: the rate when every class of an image uses the mean of its '
                  "classes' maps (one shared map); bound: any shared map peaking on one object.", '',
                  '| Method | rate (%) | own / all (%) | chance (%) | same map (%) | bound (%) |',
                  '|---|---|---|---|---|---|']
        for key, v in rows.items():
            d = v['discriminative']
            lines.append(f"| {v['name']} | {_fmt_cell(d['rate'])} | {_fmt_cell(d['own_rate'])} | "
                         f"{d['chance']['mean']:.1f} | {_fmt_cell(d['same_map'])} | {d['same_map_bound']['mean']:.1f} |")
    rows = {k: v for k, v in table.items() if v.get('similarity')}
    if rows:
        first = next(iter(rows.values()))['similarity']
        lines += ['', f"## Similarity of the SA maps of two present classes ({first['count']} pairs)", '',
                  'Same image: the maps of classes a and b of one image; other image: class a\'s map against class '
                  "b's map in another image holding b. Pearson correlation over the grid and IoU of the top 10 % cells.",
                  '', '| Method | corr, same image | corr, other image | top-cell IoU, same | top-cell IoU, other |',
                  '|---|---|---|---|---|']
        for key, v in rows.items():
            m = v['similarity']
            lines.append(f"| {v['name']} | {_fmt_cell(m['same_image_corr'])} | {_fmt_cell(m['other_image_corr'])} | "
                         f"{_fmt_cell(m['same_image_top_iou'])} | {_fmt_cell(m['other_image_top_iou'])} |")
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """``results.md``: every table of a finished report."""
    cfg = report['config']
    lines = [f"# Offline benchmark: {report['title']}", '', report['protocol'], '',
             f"## Ablations (Tables 5 and 6 style), test split, mean ± std over {len(cfg['seeds'])} seed(s)", '',
             format_table(report['table']), '', '## Table 2 style (threshold 0.5)', '',
             format_table(report['table'], TABLE2_METRICS, reference=None, switches=False)]
    if report.get('comparisons'):
        lines += ['', f"## Differences with intervals over training seeds and test images "
                      f"({report['comparisons'][0]['interpolated']['resamples']} resamples)", '',
                  'Two-level paired bootstrap: each resample draws the training seeds with replacement and, '
                  'independently, the test images with replacement; the difference is the mean over the drawn seeds '
                  'on the drawn images. "verdict": the interpolated-AP interval excludes 0.', '',
                  _format_comparisons(report['comparisons'])]
    frequency = (report.get('data') or {}).get('label_frequency_train')
    if frequency and all('per_class_AP' in v for v in report['table'].values()):
        lines += ['', '## Per-class AP (interpolated, mean over seeds; rare = train frequency < '
                      f'{RARE_FREQUENCY:g})', '', format_per_class(report['table'], frequency)]
    games = {k: v['pointing_game'] for k, v in report['table'].items() if v.get('pointing_game')}
    if games:
        first = next(iter(games.values()))
        lines += ['', f"## Spatial attention pointing game (test split, {first['num_pairs']} image-class pairs)", '',
                  'Hit: the grid cell where a present class\'s SA map peaks overlaps a ground-truth box of that class; '
                  'chance: a uniformly random cell. SA values: mean, and mean over maps of max - min.', '',
                  '| Method | hit rate (%) | chance (%) | SA mean | SA max - min |', '|---|---|---|---|---|']
        lines += [f"| {report['table'][k]['name']} | {_fmt_cell(g['hit_rate'])} | {g['chance']:.2f} | "
                  f"{g['sa_mean']:.3g} | {g['sa_peak_to_peak']:.3g} |" for k, g in games.items()]
    lines += _attention_sections(report['table'])
    sweeps = report.get('sweeps')
    if sweeps and (sweeps['topk'] or sweeps['alpha']):
        lines += ['', '## Figure 6 style sweeps (CAR + OE, test mAP interp. / non-interp.)', '']
        for key, param, label in (('topk', 'oe_topk', 'topK (α = 0.5)'), ('alpha', 'oe_alpha', 'α (topK = 3)')):
            if sweeps[key]:
                lines += [f'| {label} | ' + ' | '.join(f'{p[param]:g}' for p in sweeps[key]) + ' |',
                          '|---|' + '---|' * len(sweeps[key]),
                          '| mAP (interp.) | ' + ' | '.join(_fmt_cell(p['mAP_interpolated']) for p in sweeps[key]) + ' |',
                          '| mAP (non-interp.) | ' + ' | '.join(_fmt_cell(p['mAP_non_interpolated'])
                                                                 for p in sweeps[key]) + ' |', '']
    t = report['timing']
    hw = report['hardware']
    lines += ['', '## Run', '',
              f"- wall time: {t['total_seconds']:.0f} s (data {t['data_seconds']:.0f} s, trunk cache "
              f"{t['trunk_cache_seconds']:.0f} s, {t['num_runs']} training runs {t['runs_seconds']:.0f} s, "
              f"figures {t['figures_seconds']:.0f} s)",
              f"- hardware: {hw['summary']}; load average at start {hw.get('load_average_1_5_15min')}, at end "
              f"{report['hardware_end'].get('load_average_1_5_15min')}",
              '- versions: ' + ', '.join(f'{k} {v}' for k, v in report['versions'].items()),
              f"- date: {report['date']}", f"- command: `{report['command']}`"]
    return '\n'.join(lines) + '\n'


def compare_folders(folder_a: str, folder_b: str, num_resamples: int = 1000,
                    margin: Optional[float] = None) -> Dict[str, Any]:
    """Two benchmark invocations that differ in one setting (e.g. ``--loss bce`` and ``--loss asl``): for every row
    both trained, mean ± std over seeds of each side and the hierarchical bootstrap (training seeds and test images,
    :func:`.stats.hierarchical_bootstrap`) of the mAP difference b − a over their common seeds, on the same test
    images (checked).

    Returns:
        ``{'a', 'b', 'differences' (the config fields that differ, ``{field: [a, b]}``), 'rows' (per row: name,
        seeds, ``a`` / ``b`` metric summaries, ``interpolated`` / ``non_interpolated`` bootstrap), 'markdown'}``;
        the verdict per row is :func:`interval_verdict`'s, with ``margin`` (mAP points) when given.

    Raises:
        ValueError: no row with a common seed, or different test images.
    """
    import json

    loaded = []
    for folder in (folder_a, folder_b):
        report = json.loads((Path(folder) / 'results.json').read_text(encoding='utf-8'))
        loaded.append((Path(folder), report.get('config') or {}, [RunResult(**r) for r in report.get('runs', [])]))
    (root_a, cfg_a, runs_a), (root_b, cfg_b, runs_b) = loaded
    run_only = ('command', 'threads', 'workers', 'device', 'output', 'overlays', 'export', 'register', 'manifest',
                'bootstrap')
    cfg_a, cfg_b = dict(cfg_a), dict(cfg_b)
    for cfg in (cfg_a, cfg_b):
        cfg.setdefault('loss', 'bce')
    differences = {k: [cfg_a.get(k), cfg_b.get(k)] for k in sorted(set(cfg_a) | set(cfg_b))
                   if k not in run_only and cfg_a.get(k) != cfg_b.get(k) and k != 'rows'}
    by_a = {(r.row, r.seed): r for r in runs_a if r.purpose == 'table'}
    by_b = {(r.row, r.seed): r for r in runs_b if r.purpose == 'table'}
    rows: Dict[str, Dict[str, Any]] = {}
    for key in ROW_ORDER:
        seeds = sorted(s for (row, s) in by_a if row == key and (key, s) in by_b)
        if not seeds:
            continue
        la, lb, targets = _paired_test_logits([(root_a / by_a[(key, s)].logits_file,
                                                root_b / by_b[(key, s)].logits_file) for s in seeds])
        entry: Dict[str, Any] = {'name': ROWS[key].name, 'seeds': seeds}
        for side, by in (('a', by_a), ('b', by_b)):
            entry[side] = {m: summarize([by[(key, s)].test[m] for s in seeds]) for m in TABLE_METRICS}
        for mode in ('interpolated', 'non_interpolated'):
            entry[mode] = hierarchical_bootstrap(lb, la, targets, num_resamples=num_resamples, mode=mode)
        rows[key] = entry
    if not rows:
        raise ValueError(f'{folder_a} and {folder_b} have no row trained with a common seed')
    name_a = ', '.join(f'{k}={v[0]}' for k, v in differences.items()) or folder_a
    name_b = ', '.join(f'{k}={v[1]}' for k, v in differences.items()) or folder_b
    heads = ['Row', 'seeds'] + [f'{METRIC_LABELS.get(m, m)} {side}' for m in TABLE_METRICS for side in ('a', 'b')]
    lines = [f'a = {folder_a} ({name_a}); b = {folder_b} ({name_b}); mean ± sample std over seeds, percent; '
             f'Δ = b − a, 95% interval of the hierarchical bootstrap (training seeds and test images, '
             f'{num_resamples} resamples)'
             + (f'; non-inferiority margin {margin:g} mAP points (interp.).' if margin is not None else '.'), '',
             '| ' + ' | '.join(heads + ['Δ mAP (interp.) [95%]', 'Δ mAP (non-interp.) [95%]', 'verdict']) + ' |',
             '|' + '---|' * (len(heads) + 3)]
    for key, e in rows.items():
        i, n = e['interpolated'], e['non_interpolated']
        verdict = interval_verdict(i, 'b', 'a', margin=margin)
        cells = [e['name'], ', '.join(map(str, e['seeds']))]
        cells += [_fmt_cell(e[side][m]) for m in TABLE_METRICS for side in ('a', 'b')]
        cells += [f"{i['diff']:+.2f} [{i['ci_low']:+.2f}, {i['ci_high']:+.2f}]",
                  f"{n['diff']:+.2f} [{n['ci_low']:+.2f}, {n['ci_high']:+.2f}]", verdict]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return {'a': folder_a, 'b': folder_b, 'differences': differences, 'rows': rows, 'markdown': '\n'.join(lines)}
