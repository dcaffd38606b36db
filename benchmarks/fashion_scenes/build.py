"""Fashion Scenes build: rendering in parallel, writing COCO JSON + JPEG, statistics, safe reuse, command line."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from srdl_timm.utils import jsonable

from .scenes import _ItemPool, _item_pools, render_scene, scene_label_sets
from .sources import (BACKGROUNDS, FASHION_SCENES_CLASSES, FASHION_SCENES_VERSION, LABEL_MODEL, PRESETS, SPLITS,
                      _GENERATOR, _ITEM_SOURCE, _PARTIAL_PREFIX, _PID_FILE, _PLOT_FILE, _SIZE_BIN_EDGES, _SMALL_AREA,
                      _SPLIT_CODE, _STATS_FILE, _STREAM_ITEMS, _STREAM_RENDER, load_backgrounds, load_fashion_mnist,
                      resolve_params)

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------

_WORKER: Dict[str, Any] = {}


def _init_worker(fmnist_dir: Optional[str]) -> None:
    _WORKER['fmnist'] = {s: load_fashion_mnist(s, fmnist_dir)[0] for s in ('train', 'test')}
    _WORKER['backgrounds'] = load_backgrounds()


def _render_task(task: Tuple[str, int, List[int], List[int], Dict[str, Any], int, str]) -> List[Dict[str, Any]]:
    split, index, cats, item_idx, params, seed, out_dir = task
    images = _WORKER['fmnist'][_ITEM_SOURCE[split]]
    rng = np.random.default_rng([seed, _STREAM_RENDER, _SPLIT_CODE[split], index])
    img, objects = render_scene(cats, [images[i] for i in item_idx], params, rng, _WORKER['backgrounds'])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=int(params['jpeg_quality']))
    with open(os.path.join(out_dir, f'{index:06d}.jpg'), 'wb') as f:
        f.write(buf.getvalue())
    for o in objects:
        o['fmnist_index'] = int(item_idx[o['position']])
    return objects


def _software_versions() -> Dict[str, str]:
    import matplotlib
    import PIL
    import skimage
    return {'numpy': np.__version__, 'pillow': PIL.__version__, 'scikit-image': skimage.__version__,
            'matplotlib': matplotlib.__version__}


def _identity(seed: int, preset: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    return {'version': FASHION_SCENES_VERSION, 'seed': seed, 'preset': preset, 'params': dict(params)}


def cooccurrence_counts(label_sets: Sequence[Sequence[int]],
                        num_classes: int = len(FASHION_SCENES_CLASSES)) -> np.ndarray:
    """Image-level co-occurrence counts: ``M[i, j]`` = images containing both i and j (``M[i, i]`` = images with i).

    Args:
        label_sets: per image, the category indices present (duplicates are ignored).
        num_classes: matrix size.
    """
    y = np.zeros((len(label_sets), num_classes), dtype=np.int64)
    for r, cats in enumerate(label_sets):
        y[r, list(set(int(c) for c in cats))] = 1
    return y.T @ y


def _split_stats(label_sets: List[List[int]], objects: List[List[Dict[str, Any]]], image_size: int,
                 dropped: int) -> Dict[str, Any]:
    n = len(label_sets)
    co = cooccurrence_counts(label_sets)
    diag = np.diag(co)
    cond = np.divide(co, diag[:, None], out=np.zeros(co.shape, dtype=np.float64), where=diag[:, None] > 0)
    per_image = [len(o) for o in objects]
    areas = np.array([o['bbox'][2] * o['bbox'][3] / image_size ** 2 for objs in objects for o in objs])
    vis = np.array([o['visible_fraction'] for objs in objects for o in objs])
    instances = np.zeros(len(FASHION_SCENES_CLASSES), dtype=np.int64)
    for objs in objects:
        for o in objs:
            instances[o['category']] += 1
    q = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]

    def quantiles(x: np.ndarray) -> Dict[str, float]:
        return {f'p{int(p * 100)}': round(float(np.quantile(x, p)), 4) for p in q} if len(x) else {}

    hist = np.histogram(areas, bins=_SIZE_BIN_EDGES)[0] if len(areas) else np.zeros(len(_SIZE_BIN_EDGES) - 1)
    return {
        'num_images': n,
        'num_objects': int(sum(per_image)),
        'dropped_objects': int(dropped),
        'label_count': {c: int(diag[i]) for i, c in enumerate(FASHION_SCENES_CLASSES)},
        'label_frequency': {c: round(float(diag[i]) / max(n, 1), 4) for i, c in enumerate(FASHION_SCENES_CLASSES)},
        'instance_count': {c: int(instances[i]) for i, c in enumerate(FASHION_SCENES_CLASSES)},
        'labels_per_image_mean': round(float(diag.sum()) / max(n, 1), 4),
        'objects_per_image_mean': round(float(np.mean(per_image)) if n else 0.0, 4),
        'objects_per_image_hist': {str(k): int(v) for k, v in
                                   zip(*np.unique(per_image, return_counts=True))} if n else {},
        'cooccurrence': co.tolist(),
        'cooccurrence_conditional': np.round(cond, 4).tolist(),
        'object_area_fraction': {
            'quantiles': quantiles(areas),
            'bin_edges': list(_SIZE_BIN_EDGES),
            'hist': [int(v) for v in hist],
            f'small_fraction_below_{_SMALL_AREA}': round(float((areas < _SMALL_AREA).mean()) if len(areas) else 0.0, 4),
        },
        'visible_fraction': {
            'quantiles': quantiles(vis),
            'occluded_fraction_below_0.95': round(float((vis < 0.95).mean()) if len(vis) else 0.0, 4),
        },
    }


def _plot(stats: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, renders with Agg
    names = FASHION_SCENES_CLASSES
    split = 'train' if stats['splits']['train']['num_images'] else next(
        (s for s in SPLITS if stats['splits'][s]['num_images']), 'train')
    cond = np.asarray(stats['splits'][split]['cooccurrence_conditional'])
    fig = Figure(figsize=(13, 5.5))
    ax = fig.add_subplot(1, 2, 1)
    im = ax.imshow(cond, vmin=0, vmax=1, cmap='viridis')
    ax.set_xticks(range(len(names)), names, rotation=60, ha='right')
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f'{cond[i, j]:.2f}', ha='center', va='center', fontsize=6,
                    color='white' if cond[i, j] < 0.5 else 'black')
    ax.set_title(f'P(column | row), {split} split')
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax2 = fig.add_subplot(1, 2, 2)
    width = 0.8 / len(SPLITS)
    for k, s in enumerate(SPLITS):
        freq = [stats['splits'][s]['label_frequency'][c] for c in names]
        ax2.bar(np.arange(len(names)) + (k - 1) * width, freq, width, label=s)
    ax2.set_xticks(range(len(names)), names, rotation=60, ha='right')
    ax2.set_ylabel('fraction of images')
    ax2.set_title('label frequency')
    ax2.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={'Software': None})


def _dump_json(obj: Any, path: Path, compact: bool = True) -> None:
    text = json.dumps(obj, separators=(',', ':')) if compact else json.dumps(obj, indent=1)
    path.write_text(text + '\n', encoding='utf-8')


def _dir_totals(d: Path) -> Dict[str, int]:
    sizes = [e.stat().st_size for e in os.scandir(d) if e.is_file() and e.name.endswith('.jpg')] if d.is_dir() else []
    return {'count': len(sizes), 'bytes': int(sum(sizes))}


def _check_complete(root: Path, identity: Mapping[str, Any]) -> Tuple[bool, str]:
    """(True, '') if root holds a complete build with this identity, else (False, reason)."""
    stats_path = root / _STATS_FILE
    if not stats_path.is_file():
        return False, f'{stats_path} is missing'
    try:
        stats = json.loads(stats_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        return False, f'{stats_path} is unreadable: {e}'
    for key in ('version', 'seed', 'preset', 'params'):
        if stats.get(key) != identity[key]:
            return False, f'{stats_path} records {key}={stats.get(key)!r}, requested {identity[key]!r}'
    for split in SPLITS:
        ann = root / 'annotations' / f'{split}.json'
        if not ann.is_file():
            return False, f'{ann} is missing'
        want = stats.get('files', {}).get(split)
        got = _dir_totals(root / 'images' / split)
        if want != got:
            return False, f'{root / "images" / split} holds {got}, {stats_path} recorded {want}'
    if not (root / _PLOT_FILE).is_file():
        return False, f'{root / _PLOT_FILE} is missing'
    return True, ''


def _looks_like_ours(root: Path) -> bool:
    """True only if root carries this generator's marks (never for e.g. a real COCO folder)."""
    try:
        stats = json.loads((root / _STATS_FILE).read_text(encoding='utf-8'))
        if stats.get('generator') == _GENERATOR:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    marker = f'"generator":"{_GENERATOR}"'.encode()
    for split in SPLITS:
        try:
            with open(root / 'annotations' / f'{split}.json', 'rb') as f:
                if marker in f.read(4096):  # the info block comes first
                    return True
        except OSError:
            pass
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(parent: Path, name: str) -> None:
    for d in parent.glob(f'{_PARTIAL_PREFIX}{name}-*'):
        try:
            pid = int((d / _PID_FILE).read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        _logger.info('removing interrupted Fashion Scenes build %s', d)
        shutil.rmtree(d, ignore_errors=True)


def _write_build(tmp: Path, seed: int, preset: str, params: Dict[str, Any], workers: int,
                 fmnist_dir: Optional[str]) -> Dict[str, Any]:
    tr_images, tr_labels = load_fashion_mnist('train', fmnist_dir)
    te_images, te_labels = load_fashion_mnist('test', fmnist_dir)
    backgrounds = load_backgrounds()
    pools = _item_pools(tr_labels, te_labels, seed, params['val_item_fraction'])
    source_labels = {'train': tr_labels, 'test': te_labels}
    categories = [{'id': i + 1, 'name': n, 'supercategory': 'fashion'} for i, n in enumerate(FASHION_SCENES_CLASSES)]
    licenses = [{'id': 1, 'name': 'Fashion-MNIST items: MIT (Zalando SE); backgrounds: public domain / CC0',
                 'url': 'https://github.com/zalandoresearch/fashion-mnist'}]
    info_common = {
        'description': 'Fashion Scenes: Fashion-MNIST product photos composed onto scikit-image photographs',
        'generator': _GENERATOR, **_identity(seed, preset, params),
        'label_model': jsonable(LABEL_MODEL),
        'sources': {
            'objects': 'Fashion-MNIST (Zalando SE, MIT licence), https://github.com/zalandoresearch/fashion-mnist',
            'backgrounds': {name: {'licence': BACKGROUNDS[name], 'shape': list(img.shape),
                                   'sha256': hashlib.sha256(img.tobytes()).hexdigest()}
                            for name, img in backgrounds},
        },
        'software': _software_versions(),
    }
    (tmp / 'annotations').mkdir()
    executor = None
    if workers > 1:
        executor = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(fmnist_dir,))
    else:
        _WORKER['fmnist'] = {'train': tr_images, 'test': te_images}
        _WORKER['backgrounds'] = backgrounds
    split_stats: Dict[str, Any] = {}
    files: Dict[str, Any] = {}
    try:
        for split in SPLITS:
            n = int(params[f'num_{split}'])
            img_dir = tmp / 'images' / split
            img_dir.mkdir(parents=True)
            code = _SPLIT_CODE[split]
            wanted = scene_label_sets(seed, split, n, params['max_objects'])
            pool = _ItemPool(pools[split], source_labels[_ITEM_SOURCE[split]],
                             np.random.default_rng([seed, _STREAM_ITEMS, code]))
            tasks = [(split, i, cats, [pool.draw(c) for c in cats], params, seed, str(img_dir))
                     for i, cats in enumerate(wanted)]
            t0 = time.perf_counter()
            results = executor.map(_render_task, tasks, chunksize=16) if executor else map(_render_task, tasks)
            images, annotations, label_sets, objects = [], [], [], []
            dropped = 0
            for (_, i, cats, _, _, _, _), objs in zip(tasks, results):
                dropped += len(cats) - len(objs)
                images.append({'id': i + 1, 'file_name': f'{i:06d}.jpg', 'width': params['image_size'],
                               'height': params['image_size'], 'license': 1})
                for o in objs:
                    annotations.append({'id': len(annotations) + 1, 'image_id': i + 1,
                                        'category_id': o['category'] + 1, 'bbox': o['bbox'], 'area': o['area'],
                                        'iscrowd': 0, 'visible_fraction': o['visible_fraction'],
                                        'fmnist_index': o['fmnist_index']})
                label_sets.append([o['category'] for o in objs])
                objects.append(objs)
                if (i + 1) % 1000 == 0:
                    _logger.info('%s: %d/%d images', split, i + 1, n)
            _logger.info('%s: %d images rendered in %.1fs (%d item draws reused an item)', split, n,
                         time.perf_counter() - t0, pool.reused)
            info = {**info_common, 'split': split, 'image_dir': f'images/{split}',
                    'fashion_mnist_split': _ITEM_SOURCE[split]}
            _dump_json({'info': info, 'licenses': licenses, 'images': images, 'annotations': annotations,
                        'categories': categories}, tmp / 'annotations' / f'{split}.json')
            split_stats[split] = _split_stats(label_sets, objects, params['image_size'], dropped)
            split_stats[split]['reused_item_draws'] = pool.reused
            files[split] = _dir_totals(img_dir)
    finally:
        if executor is not None:
            executor.shutdown()
        _WORKER.clear()
    stats = {'generator': _GENERATOR, **_identity(seed, preset, params), 'classes': list(FASHION_SCENES_CLASSES),
             'files': files,
             'splits': split_stats}
    _plot(stats, tmp / _PLOT_FILE)
    _dump_json(stats, tmp / _STATS_FILE, compact=False)  # written last: marks the build complete
    return stats


def build_fashion_scenes(root: Union[str, os.PathLike], preset: str = 'quick', seed: int = 0,
                         overwrite: bool = False, workers: int = 1,
                         fmnist_dir: Optional[Union[str, os.PathLike]] = None, **overrides: Any) -> Dict[str, Any]:
    """Build (or reuse) the Fashion Scenes benchmark in ``root`` and return its statistics.

    Args:
        root: output folder (layout in the module docstring). Created if missing.
        preset: ``'tiny'``, ``'quick'`` or ``'full'`` (:data:`PRESETS`).
        seed: non-negative int; everything is deterministic from it.
        overwrite: replace an existing complete build whose seed/parameters differ. A non-empty folder that
            is not a build of this generator is never replaced.
        workers: render processes (> 1 uses a process pool; the output does not depend on it).
        fmnist_dir: Fashion-MNIST folder (default: ``$FASHION_MNIST_DIR``, then the Debian package's).
        **overrides: parameter overrides, e.g. ``num_train=200, image_size=96`` (see :func:`resolve_params`).

    Returns:
        The content of ``root/stats.json``: ``version, seed, preset, params, classes, files`` and per split
        ``splits[split]``: label counts/frequencies, co-occurrence counts and P(j|i), objects per image,
        object area fractions, visibility.

    Raises:
        FileExistsError: ``root`` holds something this call must not replace without ``overwrite=True``.
        FileNotFoundError: Fashion-MNIST is missing (the message says how to install it).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    params = resolve_params(preset, **overrides)
    root = Path(root).expanduser().absolute()
    with _build_lock(root):  # concurrent builds of one root: the first builds, the others then reuse its build
        return _build_or_reuse(root, seed, preset, params, overwrite, workers, fmnist_dir)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``root``'s parent folder, held while ``root`` is checked and built (no lock file
    is left behind; builds of other roots in the same folder wait too)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(root.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _build_or_reuse(root: Path, seed: int, preset: str, params: Dict[str, Any], overwrite: bool, workers: int,
                    fmnist_dir: Optional[Union[str, os.PathLike]]) -> Dict[str, Any]:
    """:func:`build_fashion_scenes` under its lock."""
    identity = _identity(seed, preset, params)
    ok, reason = _check_complete(root, identity)
    if ok:
        _logger.info('reusing complete Fashion Scenes build in %s (seed %d, preset %s)', root, seed, preset)
        return json.loads((root / _STATS_FILE).read_text(encoding='utf-8'))
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f'{root} exists and is not a directory')
        nonempty = any(root.iterdir())
        if nonempty and not _looks_like_ours(root):
            raise FileExistsError(f'{root} is a non-empty folder that is not a Fashion Scenes build (no '
                                  f'stats.json or annotations/*.json written by {_GENERATOR}); choose another '
                                  f'root or empty it')
        if nonempty and not overwrite:
            stats_path = root / _STATS_FILE
            old_complete = False
            if stats_path.is_file():
                try:
                    old = json.loads(stats_path.read_text(encoding='utf-8'))
                    old_complete = _check_complete(root, _identity(old['seed'], old['preset'], old['params']))[0] \
                        and old.get('version') == FASHION_SCENES_VERSION
                except (OSError, ValueError, KeyError, TypeError):
                    old_complete = False
            if old_complete:
                raise FileExistsError(f'{root} holds a complete Fashion Scenes build with other settings '
                                      f'({reason}); pass overwrite=True to replace it or choose another root')
            _logger.warning('%s holds an incomplete or outdated Fashion Scenes build (%s); rebuilding', root, reason)
    parent = root.parent
    _remove_stale_partials(parent, root.name)
    tmp = Path(tempfile.mkdtemp(prefix=f'{_PARTIAL_PREFIX}{root.name}-', dir=parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); the build is an ordinary shared folder
    (tmp / _PID_FILE).write_text(str(os.getpid()))
    t0 = time.perf_counter()
    try:
        fm = None if fmnist_dir is None else str(fmnist_dir)
        stats = _write_build(tmp, seed, preset, params, max(1, int(workers)), fm)
        (tmp / _PID_FILE).unlink()
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f'{_PARTIAL_PREFIX}{root.name}-old-', dir=parent))
            os.rename(root, trash / 'old')
            os.rename(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info('built Fashion Scenes (%s, seed %d) in %s in %.1fs', preset, seed, root, time.perf_counter() - t0)
    return stats


# ---------------------------------------------------------------------------------------------------------
# Summary / CLI
# ---------------------------------------------------------------------------------------------------------


def format_stats_summary(stats: Mapping[str, Any]) -> str:
    """Render the statistics returned by :func:`build_fashion_scenes` as a short markdown report."""
    splits = stats['splits']
    lines = [f"Fashion Scenes v{stats['version']} · preset {stats['preset']} · seed {stats['seed']} · "
             f"{stats['params']['image_size']}px", '',
             '| split | images | objects | labels/img | objects/img | small (<3% area) | occluded (<95% vis) '
             '| dropped | JPEG MB |', '|---|---|---|---|---|---|---|---|---|']
    for s in SPLITS:
        st = splits[s]
        small = next(v for k, v in st['object_area_fraction'].items() if k.startswith('small_fraction'))
        lines.append(f"| {s} | {st['num_images']} | {st['num_objects']} | {st['labels_per_image_mean']:.2f} | "
                     f"{st['objects_per_image_mean']:.2f} | {small:.1%} | "
                     f"{st['visible_fraction']['occluded_fraction_below_0.95']:.1%} | {st['dropped_objects']} | "
                     f"{stats['files'][s]['bytes'] / 1e6:.1f} |")
    lines += ['', '| category | ' + ' | '.join(f'{s} freq' for s in SPLITS) + ' |',
              '|---|' + '---|' * len(SPLITS)]
    for c in stats['classes']:
        lines.append(f'| {c} | ' + ' | '.join(f"{splits[s]['label_frequency'][c]:.3f}" for s in SPLITS) + ' |')
    q = splits['train']['object_area_fraction']['quantiles']
    if q:
        lines += ['', 'train object area (fraction of image): ' +
                  ', '.join(f'{k} {v:.3f}' for k, v in q.items())]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: build (or reuse) Fashion Scenes and print its statistics summary."""
    ap = argparse.ArgumentParser(prog='python -m benchmarks.fashion_scenes',
                                 description='Build (or reuse) the Fashion Scenes benchmark and print its statistics.')
    ap.add_argument('--root', required=True, help='output folder')
    ap.add_argument('--preset', default='quick', choices=sorted(PRESETS))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--overwrite', action='store_true', help='replace a build with other settings')
    ap.add_argument('--workers', type=int, default=1, help='render processes (output does not depend on it)')
    ap.add_argument('--fmnist-dir', default=None, help='Fashion-MNIST folder (default: $FASHION_MNIST_DIR, '
                                                        'then /usr/share/datasets/fashion-mnist)')
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=JSON',
                    help='parameter overrides, e.g. --set num_train=300 image_size=96')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            ap.error(f'--set expects KEY=VALUE, got {item!r}')
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            ap.error(f'--set {key}: {value!r} is not valid JSON')
    try:
        t0 = time.perf_counter()
        stats = build_fashion_scenes(args.root, args.preset, args.seed, overwrite=args.overwrite,
                                     workers=args.workers, fmnist_dir=args.fmnist_dir, **overrides)
        elapsed = time.perf_counter() - t0
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_stats_summary(stats))
    print(f'\n{args.root}: {elapsed:.1f}s')
    return 0
