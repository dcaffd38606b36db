"""The whole benchmark: data, the runs of every row and seed, aggregation, figures, reports."""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from srdl_timm.utils import atomic_write_json

from .attention_stats import attention_statistics
from .config import DEFAULT_OE_ALPHA, DEFAULT_OE_TOPK, BenchmarkConfig
from .data import prepare_data
from .environment import hardware_info, software_versions
from .export import export_weights
from .figures import overlays, plot_sweeps, plot_table
from .report import comparisons, markdown, protocol_text, sweep_summary, table_rows, title
from .runs import Context, RunResult, execute, prepare_frozen_trunk
from .stats import load_boxes

_logger = logging.getLogger(__name__)


def _jobs(cfg: BenchmarkConfig) -> List[Tuple[str, int, int, float, str]]:
    """``(row, seed, topk, alpha, purpose)`` in run order: seed by seed (every row of a seed, in ``cfg.rows`` order),
    so a run stopped early holds whole seeds; then the sweeps."""
    jobs: List[Tuple[str, int, int, float, str]] = []
    seen = set()

    def add(row: str, seed: int, topk: int, alpha: float, purpose: str) -> None:
        key = (row, seed, topk, round(alpha, 6))
        if key not in seen:
            seen.add(key)
            jobs.append((row, seed, topk, alpha, purpose))

    for seed in cfg.seeds:
        for row in cfg.rows:
            add(row, seed, cfg.oe_topk, cfg.oe_alpha, 'table')
    if cfg.sweeps:
        for seed in cfg.sweep_seeds:
            for k in cfg.sweep_topk:
                add('car_oe', seed, int(k), DEFAULT_OE_ALPHA, 'sweep')
            for a in cfg.sweep_alpha:
                add('car_oe', seed, DEFAULT_OE_TOPK, float(a), 'sweep')
    return jobs


#: configuration fields that do not change what a run computes (a restarted benchmark may differ in them)
# rows and seeds too: finished runs are keyed by (row, seed, top-K, alpha), so a benchmark narrowed or extended in its
# rows or seeds reuses them.
_RUN_ONLY_FIELDS = ('command', 'threads', 'workers', 'device', 'output', 'overlays', 'export', 'register', 'manifest',
                    'bootstrap', 'rows', 'seeds')


def _finished_runs(path: Path, cfg: BenchmarkConfig) -> List[RunResult]:
    """Runs of an earlier, interrupted invocation with the same configuration (up to rows and seeds) whose logits are on
    disk (reused, so a stopped multi-hour benchmark loses at most its unfinished run); [] for another configuration."""
    if not path.is_file():
        return []
    import json
    try:
        old = json.loads(path.read_text(encoding='utf-8'))
    except ValueError:
        return []
    mine = {k: v for k, v in cfg.to_dict().items() if k not in _RUN_ONLY_FIELDS}
    theirs = {k: v for k, v in (old.get('config') or {}).items() if k not in _RUN_ONLY_FIELDS}
    theirs.setdefault('loss', 'bce')  # written before the loss was a choice: BCE
    if mine != theirs:
        return []
    runs = [RunResult(**r) for r in old.get('runs', [])]
    return [r for r in runs if r.logits_file and (path.parent / r.logits_file).is_file()]


def run_benchmark(config: BenchmarkConfig, replace: bool = False) -> Dict[str, Any]:
    """Run the whole benchmark described by ``config`` and write its outputs (see ``benchmarks/run_offline.py``).

    Args:
        config: the benchmark configuration (unresolved fields take the mode's defaults).
        replace: with ``config.register``, replace an existing manifest entry of that tag.

    Returns:
        The report written to ``results.json``.
    """
    t_start = time.perf_counter()
    cfg = config.resolved()
    device = torch.device(cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    hardware = hardware_info(device)
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    _logger.info('benchmark on %s: rows %s, seeds %s, trainer %s, output %s', hardware['summary'],
                 ', '.join(cfg.rows), list(cfg.seeds), cfg.trainer, out)
    load = hardware.get('load_average_1_5_15min')
    if device.type == 'cpu' and load and load[0] > 0.5 * (os.cpu_count() or 1):
        _logger.warning('the machine is busy (load average %.2f on %d CPUs): wall times will be longer than on an idle '
                        'machine, and %d torch threads competing for the cores can be several times slower than 1 '
                        '(--threads 1)', load[0], os.cpu_count() or 1, torch.get_num_threads())
    spec = prepare_data(cfg)
    t_data = time.perf_counter() - t_start
    ctx = Context(cfg, spec, out, device)
    if cfg.trainer == 'frozen-trunk':
        prepare_frozen_trunk(ctx)
    jobs = _jobs(cfg)
    figure_model_key = ('car_oe', cfg.seeds[0], cfg.oe_topk, cfg.oe_alpha)
    need_model = cfg.overlays > 0 or bool(cfg.export)
    report: Dict[str, Any] = {
        'title': title(cfg, spec), 'status': 'running', 'date': date, 'command': cfg.command, 'pid': os.getpid(),
        'config': cfg.to_dict(), 'data': spec.info, 'label_names': spec.label_names, 'hardware': hardware,
        'versions': software_versions(), 'runs': []}
    done = {(r.row, r.seed, r.oe_topk, round(r.oe_alpha, 6)): r for r in _finished_runs(out / 'results.json', cfg)}
    if done:
        _logger.info('reusing %d finished run(s) of the interrupted benchmark in %s', len(done), out)
    runs: List[RunResult] = []
    t_runs = time.perf_counter()
    for i, (row, seed, topk, alpha, purpose) in enumerate(jobs, start=1):
        _logger.info('[%d/%d]', i, len(jobs))
        keep = need_model and (row, seed, topk, alpha) == figure_model_key
        previous = done.get((row, seed, topk, round(alpha, 6)))
        if previous is not None and not keep:
            runs.append(previous)
        else:
            runs.append(execute(ctx, row, seed, topk, alpha, purpose, keep))
        report['runs'] = [r.to_dict() for r in runs]
        atomic_write_json(out / 'results.json', report)
    runs_seconds = time.perf_counter() - t_runs
    if ctx.data_config is None:  # every run was reused from the interrupted invocation: its recorded input config
        first = runs[0].config
        ctx.data_config = {k: first.get(k) for k in ('input_size', 'interpolation', 'mean', 'std')}
        ctx.feature_grid = tuple(first.get('feature_grid') or ())
    report['protocol'] = protocol_text(cfg, spec, ctx)
    report['table'] = table_rows(runs, cfg)
    report['comparisons'] = comparisons(runs, out, cfg.bootstrap)
    report['sweeps'] = sweep_summary(runs, cfg) if cfg.sweeps else None
    t_fig = time.perf_counter()
    figures = []
    table_png = out / 'table.png'
    plot_table(report['table'], table_png, report['title'])
    figures.append(str(table_png))
    if cfg.sweeps:
        sweep_png = out / 'figure6_sweeps.png'
        plot_sweeps(report['sweeps'], report['table'].get('car'), sweep_png, report['title'])
        figures.append(str(sweep_png))
    model = ctx.models.get(figure_model_key)
    if cfg.overlays > 0 and model is not None:
        figures += overlays(ctx, model, cfg.overlays)
    report['figures'] = [os.path.relpath(f, out) for f in figures]
    figures_seconds = time.perf_counter() - t_fig
    if cfg.export and model is not None:
        recipe = cfg.command or 'benchmarks/run_offline.py (Python API)'
        report['export'] = export_weights(ctx, model, Path(cfg.export), recipe, cfg.register, cfg.manifest, replace)
    report['timing'] = {'total_seconds': time.perf_counter() - t_start, 'data_seconds': t_data,
                        'trunk_cache_seconds': ctx.cache_seconds, 'runs_seconds': runs_seconds,
                        'num_runs': len(runs), 'figures_seconds': figures_seconds}
    report['hardware_end'] = hardware_info(device)
    report['status'] = 'complete'
    text = markdown(report)
    (out / 'results.md').write_text(text, encoding='utf-8')
    report['markdown'] = text
    atomic_write_json(out / 'results.json', report)
    _logger.info('wrote %s and %s in %.1fs', out / 'results.json', out / 'results.md', report['timing']['total_seconds'])
    return report


def _run_in_child(cfg: BenchmarkConfig, replace: bool, threads: int, log_level: int) -> None:
    """One data set's :func:`run_benchmark` in a spawned process (``jobs > 1``), with its own thread count."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format=f'%(asctime)s [dataset-seed{cfg.dataset_seed}] %(levelname)s '
                                                '%(name)s: %(message)s')
    run_benchmark(cfg, replace=replace)


def _run_parallel(configs: List[BenchmarkConfig], replace: bool, jobs: int, threads: Optional[int]
                  ) -> Dict[int, Dict[str, Any]]:
    """:func:`run_benchmark` of each config in up to ``jobs`` spawned processes with ``threads`` torch threads each
    (None: the CPU's cores split evenly); the reports are read back from each ``results.json``."""
    import json
    import multiprocessing
    context = multiprocessing.get_context('spawn')
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    configs = [dataclasses.replace(cfg, threads=threads) for cfg in configs]
    level = logging.getLogger().getEffectiveLevel()
    pending, running, failed = list(configs), [], []
    while pending or running:
        while pending and len(running) < jobs:
            cfg = pending.pop(0)
            process = context.Process(target=_run_in_child, args=(cfg, replace, threads, level),
                                      name=f'dataset-seed{cfg.dataset_seed}')
            process.start()
            running.append((cfg, process))
        cfg, process = running.pop(0)
        process.join()
        if process.exitcode != 0:
            failed.append(f'dataset seed {cfg.dataset_seed} (exit status {process.exitcode}; its log is above, '
                          f'its finished runs in {cfg.output}/results.json)')
    if failed:
        raise RuntimeError('benchmark failed for ' + '; '.join(failed))
    return {cfg.dataset_seed: json.loads((Path(cfg.output) / 'results.json').read_text(encoding='utf-8'))
            for cfg in configs}


def run_dataset_seeds(config: BenchmarkConfig, dataset_seeds: Sequence[int], replace: bool = False,
                      jobs: int = 1, threads: Optional[int] = None) -> Dict[str, Any]:
    """:func:`run_benchmark` once per independently built Fashion Scenes data set (``dataset_seeds``), each into
    ``<output>/dataset-seed<N>``, plus ``<output>/summary.md`` with every data set's tables one after the other
    (reported separately: a difference that holds on one build only is not a finding). ``jobs > 1`` runs up to
    that many data sets at once in separate processes, each with ``threads`` (default ``cpu_count // jobs``) torch
    threads (on the 2-core
    CPU of offline_benchmark.md, two 1-thread processes finished the faithful preset in about half the time of one
    2-thread process running the data sets one after the other).

    Returns:
        ``{'reports': {seed: report}, 'markdown': summary}``.
    """
    if config.data != 'fashion-scenes':
        raise ValueError('--dataset-seeds builds Fashion Scenes data sets; COCO/VOC have one fixed split')
    if not dataset_seeds or len(set(dataset_seeds)) != len(dataset_seeds) or min(dataset_seeds) < 0:
        raise ValueError(f'--dataset-seeds must be distinct non-negative ints, got {list(dataset_seeds)}')
    if jobs < 1:
        raise ValueError(f'jobs must be >= 1, got {jobs}')
    base = Path(config.output)
    configs = [dataclasses.replace(config, dataset_seed=int(seed), output=str(base / f'dataset-seed{seed}'),
                                   export=config.export if seed == dataset_seeds[0] else None,
                                   register=config.register if seed == dataset_seeds[0] else None)
               for seed in dataset_seeds]
    if jobs > 1 and len(configs) > 1:
        reports = _run_parallel(configs, replace, min(jobs, len(configs)), threads)
    else:
        reports = {cfg.dataset_seed: run_benchmark(cfg, replace=replace) for cfg in configs}
    parts = [f'# Benchmark over {len(reports)} independently built data sets (dataset seeds '
             f'{", ".join(map(str, reports))})', '']
    for seed, report in reports.items():
        parts += [f'## Dataset seed {seed}: `{base / f"dataset-seed{seed}"}`', '',
                  report['markdown'].replace('\n# ', '\n### ').replace('\n## ', '\n### ').lstrip('# '), '']
    text = '\n'.join(parts)
    (base / 'summary.md').write_text(text, encoding='utf-8')
    return {'reports': reports, 'markdown': text}


def report_from_results(folder: str) -> Dict[str, Any]:
    """Tables of a run folder from its ``results.json`` alone, also while the run is going or after it was stopped:
    the finished runs only (whole seeds first, as :func:`_jobs` orders them). Writes ``results-partial.md`` when the
    run is not complete; returns the report with ``markdown``."""
    import json
    from types import SimpleNamespace
    root = Path(folder)
    report = json.loads((root / 'results.json').read_text(encoding='utf-8'))
    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    cfg = BenchmarkConfig(**{k: v for k, v in report['config'].items() if k in fields})
    runs = [RunResult(**r) for r in report['runs']]
    if not runs:
        raise ValueError(f'{root / "results.json"} holds no finished run yet')
    first = runs[0].config
    ctx = SimpleNamespace(data_config={'input_size': first.get('input_size')}, feature_grid=first.get('feature_grid'))
    kept_maps = [r for r in runs if r.logits_file and 'test_spatial_attention' in np.load(root / r.logits_file)]
    spec = prepare_data(cfg) if report.get('status') != 'complete' or kept_maps else None
    if spec is not None and report.get('status') != 'complete':
        report['protocol'] = protocol_text(cfg, spec, ctx)
    if kept_maps:  # the attention statistics of today's code, from the maps each run kept
        boxes = load_boxes(spec.create(spec.test_split))
        for r in kept_maps:
            arrays = np.load(root / r.logits_file)
            maps = arrays['test_spatial_attention'].astype(np.float32)
            n = maps.shape[0]
            r.pointing_game = attention_statistics(maps, arrays['test_targets'][:n],
                                                   None if boxes is None else boxes[:n])
    report['table'] = table_rows(runs, cfg)
    report['comparisons'] = comparisons(runs, root, cfg.bootstrap)
    report.setdefault('timing', {'total_seconds': sum(r.wall_seconds for r in runs), 'data_seconds': 0.0,
                                 'trunk_cache_seconds': 0.0, 'runs_seconds': sum(r.wall_seconds for r in runs),
                                 'num_runs': len(runs), 'figures_seconds': 0.0})
    report.setdefault('hardware_end', report['hardware'])
    planned = len(cfg.rows) * len(cfg.seeds)
    text = markdown(report)
    if report.get('status') != 'complete':
        done = {key: sorted(r.seed for r in runs if r.row == key and r.purpose == 'table') for key in cfg.rows}
        text = (f'> partial: {len(runs)} of {planned} table runs finished when this was written (the header\'s seed '
                'count is the plan); finished seeds per row: '
                + '; '.join(f'{k} {v}' for k, v in done.items()) + '.\n\n' + text)
        (root / 'results-partial.md').write_text(text, encoding='utf-8')
    report['markdown'] = text
    return report
