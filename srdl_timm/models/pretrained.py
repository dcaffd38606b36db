"""Pretrained-weight resolution for the SRDL models (the role of timm's ``_builder``/``_hub``).

:func:`check_pretrained_weights` finds, sha256-checks and configures a tag's weights; :func:`load_manifest` reads
the registry ``weights/manifest.json`` and :func:`manifest_pretrained_cfgs` turns it into timm cfgs.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from ..errors import InputError
from ..labels.thresholds import LabelThresholds
from ..utils import PathLike, sha256_file
from ..weight_files import WEIGHTS_FILENAME, check_class_count, hub_download, read_config_json, read_weight_file

__all__ = [
    'MANIFEST_SCHEMA_VERSION', 'REPO_ID_RE', 'REQUIRED_PROTOCOL', 'MANIFEST_CFG_KEYS', 'ChecksumMismatchError',
    'MissingPretrainedWeightsError', 'shipped_weights_dir', 'weights_dir', 'manifest_path', 'verify_sha256',
    'empty_manifest', 'validate_entry', 'load_manifest', 'entry_file', 'entry_pretrained_cfg',
    'manifest_pretrained_cfgs', 'check_pretrained_weights',
]

_logger = logging.getLogger(__name__)

#: Version of the ``weights/manifest.json`` layout this module reads (and hub.register_weights writes).
MANIFEST_SCHEMA_VERSION = 1
_WEIGHTS_DIR_ENV = 'SRDL_WEIGHTS_DIR'
_PACKAGED_WEIGHTS = '_weights'  # srdl_timm/_weights in a wheel: the repository's weights/ (pyproject package-dir)
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_TAG_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_\-.]*$')
#: a Hugging Face Hub repo id, ``org/name``
REPO_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_\-.]*/[A-Za-z0-9][A-Za-z0-9_\-.]*$')
#: protocol fields without which metrics are not reported (ANCHORS: make every protocol choice explicit); the
#: manifest and the model cards check the same list
REQUIRED_PROTOCOL = (('ap_definitions', 'ap_definition'), ('split',), ('input_size',))
#: pretrained_cfg fields a manifest entry may set (PretrainedCfg rejects unknown keys)
MANIFEST_CFG_KEYS = ('input_size', 'test_input_size', 'min_input_size', 'fixed_input_size', 'interpolation',
                     'crop_pct', 'test_crop_pct', 'crop_mode', 'mean', 'std', 'pool_size', 'test_pool_size',
                     'first_conv', 'classifier', 'license', 'description', 'origin_url', 'paper_name',
                     'paper_ids', 'notes')
_REQUIRED_ENTRY_KEYS = ('architecture', 'tag', 'hf_hub_id', 'file', 'sha256', 'num_classes', 'label_names_source',
                        'dataset', 'metrics', 'recipe', 'created', 'model_args')
#: model arguments that determine the weights' tensor shapes: a manifest tag's values replace the architecture's
_WEIGHT_SHAPING_ARGS = frozenset({'backbone', 'embed_dim', 'graph_layers', 'use_gcn', 'use_ca', 'use_sa',
                                  'backbone_kwargs', 'img_size'})
_TRAIN_HINT = ('srdl-train --model {arch} --data coco --root /path/to/coco --recipe paper '
               '--output runs/{arch}')


class ChecksumMismatchError(InputError, RuntimeError):
    """A weight file's sha256 differs from the one the manifest lists: the file is refused, nothing is loaded."""


class MissingPretrainedWeightsError(InputError, RuntimeError):
    """No SRDL weights exist here for the tag asked for (a ``RuntimeError``, as timm's)."""


def shipped_weights_dir() -> Path:
    """Folder of the shipped weights: ``srdl_timm/_weights`` in a wheel, else the repository's ``weights/``."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / _PACKAGED_WEIGHTS
    return packaged if packaged.is_dir() else package.parent / 'weights'


def weights_dir() -> Path:
    """Folder holding the weights registry: ``$SRDL_WEIGHTS_DIR`` if set, else :func:`shipped_weights_dir`."""
    env = os.environ.get(_WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return shipped_weights_dir()


def manifest_path() -> Path:
    """Path of the weights registry: ``weights_dir() / 'manifest.json'``."""
    return weights_dir() / 'manifest.json'


def verify_sha256(path: PathLike, expected: str, what: str = '') -> str:
    """Return ``path``'s sha256, or raise :class:`ChecksumMismatchError` when it is not ``expected``
    (``what``: where ``expected`` comes from, for the message)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weight file not found: {path}' + (f' ({what})' if what else ''))
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatchError(
            f'Refusing to load {path}: its sha256 is {actual} but {what or "the expected value"} is {expected}. '
            'The file is corrupt, incomplete or was replaced; nothing was loaded. Restore the original file '
            '(for a Hub download, delete it from the Hugging Face cache so it is fetched again), or if you '
            'retrained it on purpose, register the new file with `srdl-publish ... --manifest-tag TAG --ship`.')
    _logger.debug('sha256 ok: %s', path)
    return actual


def empty_manifest() -> Dict[str, Any]:
    """A registry with no weights (what a manifest file starts as)."""
    return {'schema_version': MANIFEST_SCHEMA_VERSION, 'weights': []}


def validate_entry(entry: Any, index: int, where: str) -> Dict[str, Any]:
    """Check one manifest entry against ``weights/README.md``'s schema (:class:`InputError` naming the field)."""
    label = f'{where} weights[{index}]'
    if not isinstance(entry, dict):
        raise InputError(f'{label} must be a JSON object')
    missing = [k for k in _REQUIRED_ENTRY_KEYS if k not in entry]
    if missing:
        raise InputError(f'{label} ({entry.get("architecture")}.{entry.get("tag")}) lacks required fields '
                         f'{missing} (schema: weights/README.md)')
    label = f'{where} entry {entry["architecture"]}.{entry["tag"]}'
    if not isinstance(entry['architecture'], str) or not entry['architecture'].startswith('srdl_'):
        raise InputError(f'{label}: architecture must be an srdl_* model name, got {entry["architecture"]!r}')
    if not isinstance(entry['tag'], str) or not _TAG_RE.match(entry['tag']):
        raise InputError(f'{label}: tag must match {_TAG_RE.pattern}, got {entry["tag"]!r}')
    if entry['file'] is None and entry['hf_hub_id'] is None:
        raise InputError(f'{label}: needs a file under weights/ or an hf_hub_id (a tag exists only for weights '
                         'that exist)')
    if entry['file'] is not None:
        f = entry['file']
        if not isinstance(f, str) or not f.endswith('.safetensors') or os.path.isabs(f) or '..' in Path(f).parts:
            raise InputError(f'{label}: file must be a relative .safetensors path inside weights/, got {f!r}')
    if entry['hf_hub_id'] is not None and not (isinstance(entry['hf_hub_id'], str)
                                               and REPO_ID_RE.match(entry['hf_hub_id'])):
        raise InputError(f'{label}: hf_hub_id must be "org/name" or null, got {entry["hf_hub_id"]!r}')
    if entry.get('hf_revision') is not None and not isinstance(entry['hf_revision'], str):
        raise InputError(f'{label}: hf_revision must be a string (commit sha) or null')
    if not isinstance(entry['sha256'], str) or not _SHA256_RE.match(entry['sha256']):
        raise InputError(f'{label}: sha256 must be 64 lower-case hex digits, got {entry["sha256"]!r}')
    if not isinstance(entry['num_classes'], int) or entry['num_classes'] < 1:
        raise InputError(f'{label}: num_classes must be a positive int, got {entry["num_classes"]!r}')
    names = entry.get('label_names')
    if names is not None and (not isinstance(names, list) or len(names) != entry['num_classes']):
        raise InputError(f'{label}: label_names must be a list of num_classes={entry["num_classes"]} names or null')
    if not isinstance(entry['model_args'], dict):
        raise InputError(f'{label}: model_args must be a JSON object (config.json model_args)')
    if entry['model_args'].get('num_classes', entry['num_classes']) != entry['num_classes']:
        raise InputError(f'{label}: model_args.num_classes differs from num_classes')
    metrics = entry['metrics']
    if not isinstance(metrics, dict) or not isinstance(metrics.get('values'), dict) or not metrics['values']:
        raise InputError(f'{label}: metrics must be {{"values": {{...}}, "protocol": {{...}}}} with at least one '
                         'value')
    protocol = metrics.get('protocol') or {}
    lacking = [' or '.join(keys) for keys in REQUIRED_PROTOCOL if not any(protocol.get(k) for k in keys)]
    if lacking:
        raise InputError(f'{label}: metrics.protocol lacks {lacking}')
    LabelThresholds.from_json(entry, label, entry['num_classes'])
    cfg = entry.get('pretrained_cfg') or {}
    unknown = sorted(set(cfg) - set(MANIFEST_CFG_KEYS))
    if unknown:
        raise InputError(f'{label}: pretrained_cfg fields {unknown} are not allowed (allowed: {MANIFEST_CFG_KEYS})')
    return entry


def load_manifest(path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Read and validate the weights registry (default :func:`manifest_path`; empty when that is missing).

    Raises:
        InputError: malformed JSON, unknown schema version, an invalid or duplicated entry (naming file and entry).
        FileNotFoundError: an explicit ``path`` does not exist.
    """
    explicit = path is not None
    path = Path(path) if explicit else manifest_path()
    if not path.is_file():
        if explicit:
            raise FileNotFoundError(f'weights manifest not found: {path}')
        _logger.debug('no weights manifest at %s', path)
        return empty_manifest()
    try:
        data = json.loads(path.read_text(encoding='utf-8-sig'))
    except json.JSONDecodeError as e:
        raise InputError(f'weights manifest {path} is not valid JSON: {e}') from e
    if not isinstance(data, dict) or data.get('schema_version') != MANIFEST_SCHEMA_VERSION \
            or not isinstance(data.get('weights'), list):
        raise InputError(f'{path}: expected {{"schema_version": {MANIFEST_SCHEMA_VERSION}, "weights": [...]}} '
                         '(schema: weights/README.md)')
    seen = set()
    digests: Dict[Tuple[str, ...], Tuple[str, str]] = {}  # weight location -> (sha256, entry name)
    for i, entry in enumerate(data['weights']):
        validate_entry(entry, i, str(path))
        key = (entry['architecture'], entry['tag'])
        if key in seen:
            raise InputError(f'{path}: {key[0]}.{key[1]} is listed twice')
        seen.add(key)
        name = f'{key[0]}.{key[1]}'
        locations = [('file', os.path.normpath(entry['file']))] if entry['file'] else []
        if entry['hf_hub_id']:
            locations.append(('hub', entry['hf_hub_id'], entry.get('hf_revision') or ''))
        for location in locations:
            other = digests.setdefault(location, (entry['sha256'], name))
            if other[0] != entry['sha256']:
                raise InputError(f'{path}: {name} and {other[1]} name the same weights ({location[1]}) with '
                                 'different sha256')
    return data


def entry_file(entry: Mapping[str, Any], base: Path) -> Optional[Path]:
    """The absolute path of a manifest entry's ``file`` (relative to ``base``, the manifest's folder), or None."""
    return (base / entry['file']).resolve() if entry.get('file') else None


def _hub_id(entry: Mapping[str, Any]) -> Optional[str]:
    if not entry.get('hf_hub_id'):
        return None
    return entry['hf_hub_id'] + (f'@{entry["hf_revision"]}' if entry.get('hf_revision') else '')


def entry_pretrained_cfg(entry: Mapping[str, Any], base_cfg: Mapping[str, Any], file: Optional[str]) -> Dict[str, Any]:
    """The timm pretrained cfg of a manifest entry: ``base_cfg`` + its pre-processing, classes and ``file``."""
    cfg = dict(base_cfg)
    cfg.update(entry.get('pretrained_cfg') or {})
    for key in ('input_size', 'test_input_size', 'min_input_size', 'mean', 'std', 'pool_size', 'test_pool_size'):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    cfg.update(
        url='',
        file=file,
        hf_hub_id=_hub_id(entry),
        hf_hub_filename=WEIGHTS_FILENAME if entry.get('hf_hub_id') else None,
        num_classes=entry['num_classes'],
        label_names=tuple(entry['label_names']) if entry.get('label_names') else None,
    )
    cfg.setdefault('description', f'SRDL weights trained on {entry["dataset"]} (weights/manifest.json)')
    return cfg


def manifest_pretrained_cfgs(
        base_cfgs: Mapping[str, Mapping[str, Any]],
        path: Optional[PathLike] = None,
) -> Dict[str, Dict[str, Any]]:
    """timm cfgs ``{'<architecture>.<tag>': cfg}`` of the manifest weights that exist (file beside the
    manifest, or a Hub repo); others are skipped with a warning."""
    manifest_file = Path(path) if path is not None else manifest_path()
    data = load_manifest(manifest_file if path is not None else None)
    out: Dict[str, Dict[str, Any]] = {}
    for entry in data['weights']:
        arch, tag = entry['architecture'], entry['tag']
        if arch not in base_cfgs:
            raise InputError(f'{manifest_file} entry {arch}.{tag}: unknown architecture {arch!r} '
                             f'(SRDL architectures: {sorted(base_cfgs)})')
        file = entry_file(entry, manifest_file.parent)
        has_file = file is not None and file.is_file()
        if file is not None and not has_file:
            if not entry.get('hf_hub_id'):
                _logger.warning('%s lists %s.%s but its weight file %s does not exist: tag not registered',
                                manifest_file, arch, tag, file)
                continue
            _logger.info('%s.%s: %s not on disk; the tag loads from the Hub (%s)', arch, tag, file,
                         entry['hf_hub_id'])
        out[f'{arch}.{tag}'] = entry_pretrained_cfg(entry, base_cfgs[arch], str(file) if has_file else None)
    return out


def _weights_file(cfg: Any) -> Optional[str]:
    """The ``file`` timm reads the weights from, or None when it reads a published folder or repo, a state dict, the
    Hub or a URL (timm prefers a file to ``hf_hub_id`` and ``url``)."""
    return None if cfg.source in ('local-dir', 'hf-hub') or cfg.state_dict else cfg.file


def _missing_weights_message(variant: str, tag: Optional[str]) -> str:
    import timm
    name = f'{variant}.{tag}' if tag else variant
    available = sorted(timm.list_pretrained('srdl_*'))
    return (
        f'No pretrained SRDL weights exist for {name}. SRDL weights are trained per dataset, and '
        + (f'the SRDL weights that exist are: {", ".join(available)}. ' if available else
           'none are published or shipped with this installation. ')
        + 'Train them: `' + _TRAIN_HINT.format(arch=variant) + '`; publish them: '
        f'`srdl-publish --checkpoint runs/{variant}/<weights>.safetensors --repo-id <org>/{variant}.<dataset>` '
        f"(then timm.create_model('hf-hub:<org>/{variant}.<dataset>', pretrained=True)), or write a folder with "
        "`--local-dir DIR` (timm.create_model('local-dir:DIR', pretrained=True)). A local file loads with "
        "pretrained_cfg_overlay=dict(file='weights.safetensors'). For an ImageNet-initialised backbone only, use "
        'pretrained=False, pretrained_backbone=True.')


def _manifests() -> Iterator[Tuple[Path, Dict[str, Any]]]:
    """The shipped manifest, then ``$SRDL_WEIGHTS_DIR``'s when set and different."""
    shipped = shipped_weights_dir() / 'manifest.json'
    yield shipped, load_manifest(shipped) if shipped.is_file() else empty_manifest()
    extra = manifest_path()
    if extra != shipped and extra.is_file():
        yield extra, load_manifest(extra)


def _not_installed_message(name: str, file: Path) -> str:
    return (f'{name} is a shipped SRDL weight, but its file {file} is not installed: this srdl_timm installation was '
            'built without the package data of weights/ (srdl_timm/_weights). Reinstall srdl-timm from a wheel or '
            'source checkout that includes it (`pip install .` in the repository), or set SRDL_WEIGHTS_DIR to a '
            f'folder holding manifest.json and {file.name}.')


def _check_published_config(cfg: Any, cache_dir: Optional[PathLike]) -> Dict[str, Any]:
    """Read the config.json of a local-dir: folder / hf-hub: repo field by field (timm reads it without checking
    any), hold its num_classes against the classifier of the folder's model.safetensors, and return it."""
    if cfg.source == 'local-dir':
        config_file = Path(cfg.file) / 'config.json'
        weights: Optional[Path] = Path(cfg.file) / WEIGHTS_FILENAME
    else:
        config_file = hub_download(cfg.hf_hub_id, 'config.json', cache_dir=cache_dir)
        try:  # the download timm's loader then finds in the cache
            weights = hub_download(cfg.hf_hub_id, WEIGHTS_FILENAME, cache_dir=cache_dir)
        except InputError:  # another weights file, or none: timm's loader looks for it and says what is wrong
            weights = None
    config = read_config_json(config_file)
    num_classes = (config.get('model_args') or {}).get('num_classes', config.get('num_classes'))
    if weights is not None and weights.is_file() and num_classes is not None:
        check_class_count(weights, read_weight_file(weights, keys=('classifier.bias',)), config_file, num_classes)
    return config


def check_pretrained_weights(variant: str, model_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Checks before an SRDL model's pretrained weights are read (called by the model factory).

    Raises :class:`MissingPretrainedWeightsError` when no weights exist; resolves a shipped tag's file; checks a
    manifest weight's sha256 (:class:`ChecksumMismatchError`) and a published config.json field by field; applies
    the entry's shape-determining ``model_args`` (others stay defaults, so ``num_classes=N`` still fine-tunes) and
    its decision thresholds.

    Args:
        variant: architecture name.
        model_kwargs: the factory's keyword arguments.

    Returns:
        The keyword arguments to build the model with.
    """
    from timm.models import resolve_pretrained_cfg

    kwargs = dict(model_kwargs)
    pretrained_cfg = kwargs.get('pretrained_cfg')
    try:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg,
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    except RuntimeError as e:  # timm: "Invalid pretrained tag (x) for arch."
        if isinstance(pretrained_cfg, str) and 'Invalid pretrained tag' in str(e):
            raise MissingPretrainedWeightsError(_missing_weights_message(variant, pretrained_cfg)) from e
        raise
    if not (cfg.source in ('local-dir', 'hf-hub') or cfg.state_dict or cfg.file or cfg.hf_hub_id or cfg.url):
        raise MissingPretrainedWeightsError(_missing_weights_message(variant, cfg.tag))
    if cfg.source in ('local-dir', 'hf-hub'):
        config = _check_published_config(cfg, kwargs.get('cache_dir'))
        if kwargs.get('label_thresholds') is None:
            kwargs['label_thresholds'] = LabelThresholds.from_json(config, 'config.json')
    location = _weights_file(cfg)
    if location is not None:
        location = _absolute_weights_file(variant, cfg.tag, location, kwargs)
    hub = cfg.hf_hub_id if cfg.source == 'hf-hub' or not (location or cfg.source or cfg.state_dict) else None
    _apply_manifest(variant, cfg, location, hub, kwargs)
    return kwargs


def _absolute_weights_file(variant: str, tag: Optional[str], location: str, kwargs: Dict[str, Any]) -> str:
    """The absolute path of a weights ``file`` (the caller's: relative to the cwd; a shipped tag's: relative to the
    package data), set as ``kwargs``' ``pretrained_cfg_overlay`` file; an error when it does not exist."""
    user_file = (kwargs.get('pretrained_cfg_overlay') or {}).get('file')
    if user_file and not os.path.isabs(location):
        location = os.path.abspath(location)
        kwargs['pretrained_cfg_overlay'] = dict(kwargs['pretrained_cfg_overlay'], file=location)
    elif not os.path.isabs(location):
        shipped = shipped_weights_dir() / location
        if not shipped.is_file():
            raise MissingPretrainedWeightsError(_not_installed_message(f'{variant}.{tag}', shipped))
        location = str(shipped)
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=location)
    if not os.path.isfile(location):
        raise FileNotFoundError(f'pretrained weights file not found: {location} (pretrained_cfg file= of {variant})')
    return location


def _apply_manifest(variant: str, cfg: Any, location: Optional[str], hub: Optional[str],
                    kwargs: Dict[str, Any]) -> None:
    """Steps 3, 5 and 6 of :func:`check_pretrained_weights` for the manifest entries of ``variant.tag``: the
    sha256 of the weights ``file`` at ``location`` or the ``hub`` repo, the entry's model_args and thresholds."""
    for mpath, data in _manifests():
        for entry in data['weights']:
            if entry['architecture'] == variant and entry['tag'] == cfg.tag:
                if kwargs.get('label_thresholds') is None:
                    kwargs['label_thresholds'] = LabelThresholds.from_json(entry, f'{mpath} entry {variant}.{cfg.tag}')
                for key, value in entry['model_args'].items():
                    if key in _WEIGHT_SHAPING_ARGS:
                        if key in kwargs and kwargs[key] != value:
                            _logger.info('%s.%s: %s=%r (the weights\' value) replaces %r', variant, cfg.tag, key,
                                         value, kwargs[key])
                        kwargs[key] = value
                    else:
                        kwargs.setdefault(key, value)
            what = f'{mpath} entry {entry["architecture"]}.{entry["tag"]}'
            if location is not None:
                file = entry_file(entry, mpath.parent)
                if file is not None and file.is_file() and os.path.samefile(file, location):
                    verify_sha256(location, entry['sha256'], what)
            elif hub and entry.get('hf_hub_id'):
                repo, _, rev = str(hub).partition('@')
                if repo == entry['hf_hub_id'] and (rev or None) == (entry.get('hf_revision') or None):
                    filename = cfg.hf_hub_filename or WEIGHTS_FILENAME
                    cached = hub_download(hub, filename, cache_dir=kwargs.get('cache_dir'))
                    verify_sha256(cached, entry['sha256'], f'{what} ({entry["hf_hub_id"]}/{filename})')
