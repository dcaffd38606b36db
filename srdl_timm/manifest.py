"""Writing the weights registry ``weights/manifest.json`` (schema in ``weights/README.md``): register published weights,
verify files, render the table. Reading it is :mod:`srdl_timm.models.pretrained`."""
from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import InputError
from .labels import LabelThresholds
from .model_card import normalise_metrics
from .models.pretrained import (
    MANIFEST_CFG_KEYS, empty_manifest, entry_file, load_manifest, manifest_path, validate_entry, verify_sha256,
)
from .utils import PathLike, atomic_write_bytes, atomic_write_json, sha256_file
from .weight_files import WEIGHTS_FILENAME, read_config_json

__all__ = ['read_json', 'register_weights', 'verify_manifest', 'manifest_markdown']

_logger = logging.getLogger(__name__)


def read_json(path: PathLike, what: str) -> Any:
    """JSON of ``path``; :class:`InputError` naming ``what`` and the file when it is missing or malformed."""
    try:
        with open(path, 'r', encoding='utf-8-sig') as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f'{what} not found: {path}') from None
    except json.JSONDecodeError as e:
        raise InputError(f'{what} {path} is not valid JSON: {e}') from e


def _entry(config: Dict[str, Any], folder: Path, tag: str, rel: Optional[str], digest: str, size: int,
           **fields: Any) -> Dict[str, Any]:
    """The manifest entry of a published folder's weights (``fields``: the registration's own values)."""
    pcfg = config.get('pretrained_cfg') or {}
    entry = dict(architecture=config['architecture'], tag=tag, hf_hub_id=fields.pop('hf_hub_id'),
                 hf_revision=fields.pop('hf_revision'), file=rel, sha256=digest, size_bytes=size,
                 num_classes=int(config['num_classes']), label_names=config.get('label_names'), **fields,
                 created=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
                 model_args=config.get('model_args') or {},
                 pretrained_cfg={k: pcfg[k] for k in MANIFEST_CFG_KEYS if pcfg.get(k) is not None})
    thresholds = LabelThresholds.from_json(config, str(folder / 'config.json'))
    if thresholds is not None:
        entry.update(thresholds.to_json())
    return entry


def register_weights(
        folder: PathLike,
        *,
        tag: str,
        dataset: str,
        recipe: str,
        label_names_source: str,
        metrics: Union[None, PathLike, Mapping[str, Any]],
        protocol: Optional[Mapping[str, Any]] = None,
        ship: bool = True,
        hf_hub_id: Optional[str] = None,
        hf_revision: Optional[str] = None,
        manifest: Optional[PathLike] = None,
        replace: bool = False,
        notes: Optional[str] = None,
) -> Dict[str, Any]:
    """Add a published folder's weights to the registry (``weights/manifest.json``); returns the entry written.

    Args:
        folder: a folder written by :func:`save_pretrained_dir` (its decision thresholds go into the entry too).
        tag: the pretrained tag (``timm.create_model('<architecture>.<tag>', pretrained=True)``).
        dataset, recipe, label_names_source, notes: what the entry states.
        metrics, protocol: the srdl-validate report (path or dict) of these weights, and protocol overrides.
        ship: copy model.safetensors to ``weights/<architecture>.<tag>.safetensors``.
        hf_hub_id, hf_revision: the Hub repo and the commit holding exactly this file.
        manifest: the manifest to edit (default :func:`manifest_path`); replace: replace an existing entry.
    """
    folder = Path(folder)
    config = read_config_json(folder / 'config.json')
    weights = folder / WEIGHTS_FILENAME
    if not weights.is_file():
        raise InputError(f'{weights} not found: register a folder written by srdl-publish')
    if not ship and not hf_hub_id:
        raise InputError(f'{tag}: a manifest entry needs weights that exist: ship the file into weights/ '
                         '(ship=True / --ship) or give the Hub repo it was pushed to')
    values, proto, _ = normalise_metrics(metrics, protocol)
    if not values:
        raise InputError(f'{tag}: a manifest entry needs the metrics of these weights (an srdl-validate report)')
    mfile = Path(manifest) if manifest is not None else manifest_path()
    data = load_manifest(mfile) if mfile.is_file() else empty_manifest()
    arch = config['architecture']
    kept = [e for e in data['weights'] if (e['architecture'], e['tag']) != (arch, tag)]
    if len(kept) != len(data['weights']) and not replace:
        raise InputError(f'{mfile} already lists {arch}.{tag}; pass replace=True (--replace) to overwrite it')
    digest = sha256_file(weights)
    rel = None
    if ship:
        rel = f'{arch}.{tag}.safetensors'
        atomic_write_bytes(mfile.parent / rel, weights.read_bytes())
        verify_sha256(mfile.parent / rel, digest, f'the copy of {weights}')
    entry = _entry(config, folder, tag, rel, digest, weights.stat().st_size, hf_hub_id=hf_hub_id,
                   hf_revision=hf_revision, label_names_source=label_names_source, dataset=dataset,
                   metrics={'values': values, 'protocol': proto}, recipe=recipe)
    if notes:
        entry['notes'] = notes
    validate_entry(entry, len(data['weights']), str(mfile))
    data['weights'] = kept + [entry]
    atomic_write_json(mfile, data)
    _logger.info('registered %s.%s in %s (sha256 %s)', arch, tag, mfile, digest)
    return entry


def verify_manifest(path: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """Check every weight of the manifest on this machine (``cache_dir``: Hugging Face cache, nothing downloaded)
    against its sha256: ``[(architecture.tag, 'ok' | 'MISMATCH ...' | 'missing' | 'not cached')]``."""
    from huggingface_hub import try_to_load_from_cache

    mfile = Path(path) if path is not None else manifest_path()
    data = load_manifest(mfile)
    report = []
    for entry in data['weights']:
        name = f'{entry["architecture"]}.{entry["tag"]}'
        file = entry_file(entry, mfile.parent)
        if file is None or not file.is_file():
            cached = try_to_load_from_cache(entry['hf_hub_id'], WEIGHTS_FILENAME, cache_dir=cache_dir,
                                            revision=entry.get('hf_revision')) if entry.get('hf_hub_id') else None
            if not isinstance(cached, str):
                report.append((name, 'missing' if file is not None else 'not cached'))
                continue
            file = Path(cached)
        actual = sha256_file(file)
        report.append((name, 'ok' if actual == entry['sha256'] else f'MISMATCH {file}: sha256 {actual}'))
    return report


def manifest_markdown(manifest: Union[None, PathLike, Mapping[str, Any]] = None) -> str:
    """A markdown table of the registry (a path or a loaded dict) for MODEL_CARD.md, or a sentence saying none
    exist yet and how to make them."""
    data = dict(manifest) if isinstance(manifest, Mapping) else load_manifest(manifest)
    if not data['weights']:
        return ('No SRDL weights are published or shipped yet. Train with `srdl-train`, evaluate with '
                '`srdl-validate --output results.json`, then publish with `srdl-publish --checkpoint ... '
                '--metrics results.json --repo-id org/name` (add `--manifest-tag TAG --ship` to list them here).\n')
    rows = ['| model | dataset | classes | mAP interp. | mAP non-interp. | CF1 | OF1 | protocol | weights | '
            'sha256 | recipe |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for e in data['weights']:
        v = e['metrics']['values']
        p = e['metrics'].get('protocol', {})
        size = p.get('input_size')
        protocol = ', '.join(x for x in (
            f'split {p["split"]}' if p.get('split') else '',
            f'{size[-2]}x{size[-1]}' if size else '',
            p.get('resize', ''), p.get('units', '')) if x)
        where = []
        if e.get('file'):
            where.append(f'`weights/{e["file"]}`')
        if e.get('hf_hub_id'):
            where.append(f'[{e["hf_hub_id"]}](https://huggingface.co/{e["hf_hub_id"]})'
                         + (f' @ `{e["hf_revision"][:10]}`' if e.get('hf_revision') else ''))
        cell = lambda k: f'{v[k]:.2f}' if k in v else '—'  # noqa: E731
        rows.append(
            f'| `{e["architecture"]}.{e["tag"]}` | {e["dataset"]} | {e["num_classes"]} | {cell("mAP_interpolated")} '
            f'| {cell("mAP_non_interpolated")} | {cell("CF1")} | {cell("OF1")} | {protocol} | {"<br>".join(where)} '
            f'| `{e["sha256"][:12]}…` | `{e["recipe"]}` |')
    rows.append('')
    rows.append('mAP interp. = mean of all-point interpolated AP (VOC2010+); mAP non-interp. = mean of precision at '
                'each positive (ML-GCN/ASL). Load any row with `timm.create_model(\'<model>\', pretrained=True)` '
                'after `import srdl_timm`; the file is refused if its sha256 differs from the manifest.')
    return '\n'.join(rows) + '\n'
