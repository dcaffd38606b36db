"""The SRDL paper's ablations (Tables 5 and 6, Figures 5 and 6) and the peer heads, in one command.

By default it runs on *Fashion Scenes* (``benchmarks/fashion_scenes``: real Fashion-MNIST product photos pasted
onto the photographs shipped with scikit-image, written in COCO format), built on first use, so the method can be
tried on any machine before spending GPU-days. From the repository root::

    python benchmarks/run_offline.py --quick          # a 2-core CPU, about 10 minutes (the README's main job)
    python benchmarks/run_offline.py --faithful       # paper-like attention grid (12x12), 3 seeds x 2 data sets
    python benchmarks/run_offline.py --end-to-end     # the same grid with the whole backbone trained (fit)
    python benchmarks/run_offline.py --sweeps         # + the top-K and alpha sweeps of Figure 6
    python benchmarks/run_offline.py --full           # a GPU: 'full' preset, end-to-end fine-tuning
    python benchmarks/run_offline.py --data coco --root /data/coco     # the paper recipe (§4.2) on MS-COCO 2014
    python benchmarks/run_offline.py --data voc --root /data/VOCdevkit
    python benchmarks/run_offline.py --quick --loss asl   # every row with the asymmetric loss (-> ...-quick-asl)
    python benchmarks/run_offline.py --compare OUT_BCE OUT_ASL   # BCE vs ASL per row, with bootstrap intervals

Rows (``--rows``): ``baseline``, ``car_no_gcn``, ``car_no_ca``, ``car_no_sa``, ``car``, ``car_oe`` (= SRDL),
``car_oe_erased`` (L_era on the erased classes only) and the peer heads of ``benchmarks/peer_heads.py`` on the same
backbone: ``ml_decoder``, ``csra``, ``ml_gcn``. Every row is trained with every seed; the report gives mean ± sample
std over seeds, paired-bootstrap intervals of the differences, per-class AP and the attention pointing game with its
chance rate. The code lives in ``benchmarks/offline/`` (config, data, trunk trainer, runs, stats, report, figures,
export); protocols and measured results: ``benchmarks/offline_benchmark.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` is a package

import torch  # noqa: E402

from srdl_timm.cli import add_common_args, run_cli  # noqa: E402
from srdl_timm.errors import InputError  # noqa: E402
from srdl_timm.loss import LOSSES  # noqa: E402

from benchmarks.offline import (DATA_SOURCES, DEFAULT_OE_ALPHA, DEFAULT_OE_TOPK, ROW_ORDER, TRAINERS,  # noqa: E402
                                BenchmarkConfig, compare_folders, report_from_results, run_benchmark,
                                run_dataset_seeds)

PROG = 'benchmarks/run_offline.py'


def _rows_arg(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    return None if values is None else [v for item in values for v in item.split(',') if v]


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags; defaults per mode are in ``benchmarks.offline.config.MODES``."""
    p = argparse.ArgumentParser(
        prog=PROG, description="The SRDL paper's ablations and peer heads on the embedded Fashion Scenes benchmark "
                               '(default) or on COCO / VOC.',
        epilog='Defaults per mode are in benchmarks/offline/config.py (MODES); an explicit flag always wins.')
    g = p.add_argument_group('mode')
    m = g.add_mutually_exclusive_group()
    m.add_argument('--quick', dest='mode', action='store_const', const='quick',
                   help='(default) a 2-core CPU in about 10 min: quick preset, frozen-trunk trainer, 3 seeds')
    m.add_argument('--faithful', dest='mode', action='store_const', const='faithful',
                   help='paper-like attention resolution: 192 px at output stride 16 (12x12 grid), last block stage '
                        'trained, 3 seeds, SRDL rows + peers, 2 independently built data sets run side by side '
                        '(2-core CPU: see benchmarks/offline_benchmark.md for the wall time)')
    m.add_argument('--end-to-end', dest='mode', action='store_const', const='end-to-end',
                   help='the whole backbone trained from images (paper augmentation, srdl_timm.training.fit) at the '
                        "faithful protocol's 12x12 grid: baseline, CAR, CAR + OE, ML-Decoder, CSRA x 3 seeds x 2 data "
                        'sets run side by side (2-core CPU: see benchmarks/offline_benchmark.md for the wall time)')
    m.add_argument('--full', dest='mode', action='store_const', const='full',
                   help='a GPU: full preset (224 px), end-to-end training as srdl-train does, 3 seeds')
    p.set_defaults(mode='quick')
    g = p.add_argument_group('data')
    g.add_argument('--data', default='fashion-scenes', choices=DATA_SOURCES,
                   help='fashion-scenes (embedded, built on first use), coco (2014 layout) or voc (VOC2007 devkit)')
    g.add_argument('--root', default=None, help='dataset folder (fashion-scenes: built there if missing; default '
                                                '$SRDL_BENCHMARK_DATA or ~/.cache/srdl_timm/benchmark/...)')
    g.add_argument('--preset', default=None, choices=('tiny', 'quick', 'full'), help='Fashion Scenes preset')
    g.add_argument('--dataset-seeds', type=int, nargs='+', default=None,
                   help='Fashion Scenes build seeds; each is a separate data set, reported separately '
                        '(quick: 0; faithful: 0 1)')
    g.add_argument('--set', nargs='*', default=[], metavar='KEY=JSON', help='Fashion Scenes parameter overrides')
    g = p.add_argument_group('model')
    g.add_argument('--model', default='srdl_efficientnet_lite0', help='srdl_* architecture (peers use its backbone)')
    g.add_argument('--backbone', default=None, help="override the architecture's timm backbone")
    g.add_argument('--no-pretrained-backbone', dest='pretrained_backbone', action='store_false',
                   help='random backbone init instead of ImageNet weights')
    g.add_argument('--label-embeddings', default='auto', help='auto (coco/voc arrays, else GloVe 6B-50d), none, or a '
                                                              'source/path understood by srdl_timm.labels')
    g = p.add_argument_group('protocol')
    g.add_argument('--trainer', default=None, choices=TRAINERS, help='default: frozen-trunk (quick, faithful), '
                                                                      'fit otherwise')
    g.add_argument('--rows', nargs='+', default=None, metavar='ROW',
                   help=f'rows to train (comma or space separated): {", ".join(ROW_ORDER)}')
    g.add_argument('--seeds', type=int, nargs='+', default=None, help='training seeds (quick/faithful/full: 0 1 2)')
    g.add_argument('--epochs', type=int, default=None)
    g.add_argument('-b', '--batch-size', type=int, default=None)
    g.add_argument('--lr', type=float, default=None)
    g.add_argument('--weight-decay', type=float, default=None)
    g.add_argument('--warmup-epochs', type=float, default=None)
    g.add_argument('--opt', dest='optimizer', default=None,
                   help='fit trainer: timm optimizer name (end-to-end: adamw; full: adam); frozen-trunk: adamw only')
    g.add_argument('--loss', default='bce', choices=LOSSES,
                   help='per-entry loss of every row: bce (the paper) or asl (asymmetric loss, the ASL paper\'s '
                        'gamma-/gamma+/clip); default output folder gets an -asl suffix')
    g.add_argument('--row-lr', nargs='+', default=[], metavar='ROW=LR',
                   help='per-row learning rates (chosen on validation data, benchmarks/select_lr.py); other rows use '
                        '--lr')
    g.add_argument('--row-lr-from', default=None, metavar='FILE',
                   help="per-row learning rates from benchmarks/select_lr.py's JSON ('chosen': {row: lr})")
    g.add_argument('--loss-reduction', default='mean', choices=('mean', 'sum'),
                   help='eqs. 11-12 over a mini-batch: mean (default) or sum (as the paper writes them)')
    g.add_argument('--img-size', type=int, default=None, help="input size (quick: the images' own 128 px)")
    g.add_argument('--train-stages', type=int, default=None,
                   help='frozen-trunk: trailing backbone units trained (EfficientNet units: stem, 7 block stages, '
                        'head conv)')
    g.add_argument('--output-stride', type=int, default=None, choices=(8, 16, 32),
                   help='backbone output stride (8: dilated last stages, a 4x finer attention grid)')
    g.add_argument('--spatial-init', default='zero', choices=('zero', 'torch'),
                   help="SRDL rows: f_s of eq. 5 zero-initialised (the model's default; SA starts at 0.5) or PyTorch's "
                        'init (the init of the tables measured before 2026-11-30)')
    g.add_argument('--graph-kind', default='auto', choices=('auto', 'dense', 'knn'),
                   help="SRDL rows: eq. 3's V, the paper's dense C x C or the kNN C x k (graph_kind of SRDL)")
    g.add_argument('--graph-neighbors', type=int, default=16, help='SRDL rows: k of the kNN V (graph_neighbors)')
    g.add_argument('--batchnorm', default=None, choices=('frozen', 'train'),
                   help='frozen-trunk: BatchNorm of the trained units on running (frozen) or batch (train) statistics')
    g.add_argument('--oe-topk', type=int, default=DEFAULT_OE_TOPK, help='OE top-K of the table rows')
    g.add_argument('--oe-alpha', type=float, default=DEFAULT_OE_ALPHA, help='OE alpha of the table rows')
    g.add_argument('--amp', action='store_true', help='bfloat16 autocast in training (evaluation in float32)')
    g.add_argument('--val-every-epoch', action='store_true',
                   help='frozen-trunk: val mAP after every epoch in the history (fit always does it)')
    g = p.add_argument_group('figures')
    g.add_argument('--sweeps', action='store_true', help='also train the Figure 6 top-K and alpha sweeps of CAR + OE')
    g.add_argument('--sweep-topk', type=int, nargs='+', default=None)
    g.add_argument('--sweep-alpha', type=float, nargs='+', default=None)
    g.add_argument('--sweep-seeds', type=int, nargs='+', default=None)
    g.add_argument('--overlays', type=int, default=None, help='test images with Figure 5 attention overlays (0: none)')
    g.add_argument('--bootstrap', type=int, default=None, help='paired bootstrap resamples (0: point estimates only)')
    g = p.add_argument_group('weights')
    g.add_argument('--export', default=None, metavar='DIR',
                   help='write the CAR + OE model of the first seed as a timm Hub folder (float16)')
    g.add_argument('--register', default=None, metavar='TAG',
                   help='list the exported weights in weights/manifest.json as <model>.TAG (copies them into weights/)')
    g.add_argument('--manifest', default=None, help="manifest to edit (default: the repository's weights/manifest.json)")
    g.add_argument('--replace', action='store_true', help='replace an existing manifest entry of the same tag')
    g = p.add_argument_group('run')
    g.add_argument('--output', default=None, help='output folder (default benchmark-results/<data>-<mode>)')
    g.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    g.add_argument('-j', '--workers', type=int, default=None, help='data loader workers')
    g.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: all logical CPUs; with '
                   '--parallel-datasets, per process: the CPUs split evenly)')
    g.add_argument('--parallel-datasets', type=int, default=None, metavar='N',
                   help='with several --dataset-seeds, run up to N data sets at once in separate processes '
                        '(default: --faithful as many as there are data sets, up to the CPU count; else 1)')
    g.add_argument('--compare', nargs=2, default=None, metavar=('DIR_A', 'DIR_B'),
                   help='only compare two finished invocations that differ in one setting (e.g. --loss bce and asl): '
                        'per row, mean ± std of each and the bootstrap interval of the mAP difference B - A')
    g.add_argument('--margin', type=float, default=None, metavar='MAP_POINTS',
                   help='with --compare: a non-inferiority margin fixed before the runs; a row whose interval of '
                        'B - A lies above -MARGIN reads "b not worse than a by MARGIN"')
    g.add_argument('--report-from', default=None, metavar='DIR',
                   help="only print the tables of DIR/results.json (also of an unfinished run: its finished runs; "
                        "written to DIR/results-partial.md)")
    return add_common_args(p)


def config_from_args(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from parsed arguments (``dataset_seed`` = the first of ``--dataset-seeds``).

    Raises:
        InputError: a malformed ``--set`` value.
    """
    overrides: Dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            raise InputError(f'--set expects KEY=JSON, got {item!r}')
        try:
            overrides[key] = json.loads(value)
        except ValueError as e:
            raise InputError(f'--set {key}: {value!r} is not valid JSON') from e
    row_lr: Dict[str, float] = {}
    if args.row_lr_from:
        try:
            row_lr.update({k: float(v) for k, v in json.loads(Path(args.row_lr_from).read_text())['chosen'].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"--row-lr-from {args.row_lr_from}: not a select_lr.py JSON with 'chosen' ({e})") from e
    for item in args.row_lr:
        key, sep, value = item.partition('=')
        try:
            row_lr[key] = float(value)
        except ValueError:
            sep = ''
        if not sep:
            raise InputError(f'--row-lr expects ROW=LR, got {item!r}')
    mode = 'paper' if args.data in ('coco', 'voc') else args.mode
    output = args.output or os.path.join('benchmark-results', f'{args.data}-{mode}'
                                         + ('' if args.loss == 'bce' else f'-{args.loss}')
                                         + ('' if args.graph_kind == 'auto' else f'-{args.graph_kind}'))
    command = f'python {PROG} ' + ' '.join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return BenchmarkConfig(
        data=args.data, root=args.root, preset=args.preset, dataset_seed=(args.dataset_seeds or [0])[0],
        dataset_overrides=overrides, model=args.model, backbone=args.backbone,
        pretrained_backbone=args.pretrained_backbone, label_embeddings=args.label_embeddings, mode=args.mode,
        trainer=args.trainer, rows=None if args.rows is None else tuple(_rows_arg(args.rows)), seeds=args.seeds,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, optimizer=args.optimizer, loss=args.loss, row_lr=row_lr,
        loss_reduction=args.loss_reduction,
        img_size=args.img_size, train_stages=args.train_stages,
        output_stride=args.output_stride, batchnorm=args.batchnorm,
        zero_init_spatial=args.spatial_init == 'zero', graph_kind=args.graph_kind,
        graph_neighbors=args.graph_neighbors, oe_topk=args.oe_topk, oe_alpha=args.oe_alpha,
        amp=args.amp, val_every_epoch=args.val_every_epoch, sweeps=args.sweeps, sweep_topk=args.sweep_topk,
        sweep_alpha=args.sweep_alpha, sweep_seeds=args.sweep_seeds, overlays=args.overlays, bootstrap=args.bootstrap,
        export=args.export, register=args.register, manifest=args.manifest, output=output, device=args.device,
        workers=args.workers, threads=args.threads or torch.get_num_threads(), command=command.strip())


def run(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; print the tables and where the outputs are."""
    t0 = time.perf_counter()
    if args.margin is not None and not args.compare:
        raise InputError('--margin is read only with --compare DIR_A DIR_B')
    if args.margin is not None and not args.margin > 0:
        raise InputError(f'--margin {args.margin:g}: a margin is a positive number of mAP points')
    if args.report_from:
        print(report_from_results(args.report_from)['markdown'])
        return 0
    if args.compare:
        try:
            print(compare_folders(*args.compare, num_resamples=args.bootstrap or 1000, margin=args.margin)['markdown'])
        except (OSError, ValueError) as e:
            raise InputError(f'--compare {" ".join(args.compare)}: {e}') from e
        return 0
    threads_given = args.threads  # None: --parallel-datasets splits the CPUs between its processes
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    args.threads = threads
    config = config_from_args(args, argv)
    try:
        resolved = config.resolved()  # validate every flag before anything is built or trained
    except ValueError as e:
        raise InputError(str(e)) from e
    dataset_seeds = args.dataset_seeds or resolved.dataset_seeds
    if config.data == 'fashion-scenes' and len(dataset_seeds) > 1:
        jobs = args.parallel_datasets
        if jobs is None:
            jobs = min(len(dataset_seeds), os.cpu_count() or 1) if resolved.mode in ('faithful', 'end-to-end') else 1
        if jobs < 1:
            raise InputError(f'--parallel-datasets must be >= 1, got {jobs}')
        result = run_dataset_seeds(config, dataset_seeds, replace=args.replace, jobs=jobs,
                                   threads=threads_given)
        print(result['markdown'])
        print(f"results: {Path(config.output) / 'summary.md'} and dataset-seed*/results.{{json,md}}")
        print(f'total wall time: {time.perf_counter() - t0:.1f} s')
        return 0
    if config.data == 'fashion-scenes':
        config.dataset_seed = int(dataset_seeds[0])
    report = run_benchmark(config, replace=args.replace)
    print(report['markdown'])
    out = Path(config.output)
    print(f'results: {out / "results.json"}, {out / "results.md"}; figures: '
          + ', '.join(str(out / f) for f in report['figures'][:3]) + (' ...' if len(report['figures']) > 3 else ''))
    if report.get('export'):
        e = report['export']
        print(f"exported weights: {e['folder']} (sha256 {e['sha256']}, {e['size_bytes'] / 1e6:.1f} MB), test mAP "
              f"{e['metrics']['mAP_interpolated']:.2f} (interpolated)"
              + (f"; registered as {config.model}.{config.register}" if e.get('entry') else ''))
    print(f'total wall time: {time.perf_counter() - t0:.1f} s')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 done, 2 bad input (message on stderr), 1 failure."""
    return run_cli(PROG, build_parser, lambda args: run(args, argv), argv)


if __name__ == '__main__':
    sys.exit(main())
