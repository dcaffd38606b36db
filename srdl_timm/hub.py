"""Publishing SRDL weights in timm's Hugging Face Hub layout, and the registry of published/shipped weights.

Publishing (``srdl-publish``, :func:`publish`, :func:`save_pretrained_dir`) writes exactly what timm's own
``push_to_hf_hub`` writes, through timm's own ``save_for_hf``:

* ``model.safetensors`` — the weights, never a pickle (``pytorch_model.bin`` is not written);
* ``config.json`` — ``architecture``, ``num_classes``, ``label_names``, ``model_args`` that rebuild the exact
  model (backbone and every SRDL hyper-parameter, see :func:`srdl_model_args`) and ``pretrained_cfg`` (input
  size, mean/std, interpolation, crop_pct/crop_mode);
* ``README.md`` — a model card with Hub metadata (``library_name: timm``, multi-label tags, license, datasets,
  a ``model-index`` with the metrics) and the evaluation protocol the metrics were measured with.

With ``local_dir`` the folder is written without any network access; without it the folder is uploaded with
``huggingface_hub.HfApi.create_repo`` + ``upload_folder`` (the calls ``timm.models.push_to_hf_hub`` makes; the
upload itself cannot be exercised offline and is not covered by the tests).

Such a folder or Hub repo then loads through timm's own machinery, after ``import srdl_timm``::

    timm.create_model('local-dir:/path/to/folder', pretrained=True)
    timm.create_model('hf-hub:org/repo', pretrained=True)          # HF_HUB_OFFLINE=1 works from the cache
    timm.create_model('srdl_resnet101', pretrained=True, pretrained_cfg_overlay=dict(file='w.safetensors'))

The registry (``weights/manifest.json``, schema in ``weights/README.md``) lists every published or shipped SRDL
weight. :func:`manifest_pretrained_cfgs` / :func:`with_manifest_tags` turn each entry whose weights exist (a file
under ``weights/`` or a Hub repo) into a timm pretrained tag ``'<architecture>.<tag>'`` (the model module builds its
``default_cfgs`` with them); :func:`check_pretrained_weights`, called by the model factory before any weight is
read, refuses a manifest weight whose sha256 differs from the manifest, applies the arguments the weights were built
with, and raises :class:`MissingPretrainedWeightsError` — saying how to train and publish weights — when none exist.
:func:`register_weights` adds an entry, :func:`verify_manifest` checks the files, :func:`manifest_markdown` renders
the table for MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from .utils import sha256_file

__all__ = [
    'MANIFEST_SCHEMA_VERSION',
    'WEIGHTS_FILENAME',
    'ChecksumMismatchError',
    'MissingPretrainedWeightsError',
    'PublishResult',
    'weights_dir',
    'manifest_path',
    'sha256_file',
    'verify_sha256',
    'srdl_model_args',
    'model_card',
    'save_pretrained_dir',
    'publish',
    'push_folder',
    'load_checkpoint_model',
    'load_manifest',
    'manifest_pretrained_cfgs',
    'with_manifest_tags',
    'check_pretrained_weights',
    'register_weights',
    'verify_manifest',
    'manifest_markdown',
    'build_parser',
    'main',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Version of the ``weights/manifest.json`` layout this module reads and writes.
MANIFEST_SCHEMA_VERSION = 1
#: The one weights file a published folder / Hub repo holds (timm's safetensors name).
WEIGHTS_FILENAME = 'model.safetensors'
_PUBLISHED_FILES = ('config.json', WEIGHTS_FILENAME, 'README.md')
_WEIGHTS_DIR_ENV = 'SRDL_WEIGHTS_DIR'
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_TAG_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_\-.]*$')
_REPO_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_\-.]*/[A-Za-z0-9][A-Za-z0-9_\-.]*$')

#: ``SRDL.__init__`` arguments that never go into published ``model_args``: run-time or training-only switches,
#: and category-dependent inputs whose values are in the weights (the label-graph nodes are the
#: ``label_graph.node_features`` buffer) or in config.json's top-level ``label_names``.
_NOT_MODEL_ARGS = frozenset({
    'pretrained_backbone', 'label_embeddings', 'label_names', 'object_erasing', 'drop_rate', 'drop_path_rate',
    'device', 'dtype',
})

#: metrics shown first in model cards / tables, with readable names
_METRIC_NAMES = {
    'mAP_interpolated': 'mAP (all-point interpolated AP)',
    'mAP_non_interpolated': 'mAP (non-interpolated AP)',
    'CP': 'CP', 'CR': 'CR', 'CF1': 'CF1', 'OP': 'OP', 'OR': 'OR', 'OF1': 'OF1',
    'CP_top3': 'CP (top-3)', 'CR_top3': 'CR (top-3)', 'CF1_top3': 'CF1 (top-3)',
    'OP_top3': 'OP (top-3)', 'OR_top3': 'OR (top-3)', 'OF1_top3': 'OF1 (top-3)',
}
#: scalar entries of an srdl-validate report that are bookkeeping, not metrics
_NOT_METRICS = frozenset({'threshold', 'top_k', 'num_samples', 'num_ignored_entries', 'num_samples_all_ignored',
                          'num_classes', 'num_classes_evaluated'})
#: protocol fields kept in model cards and the manifest (local paths and run details are dropped)
_PROTOCOL_KEYS = ('ap_definitions', 'ap_definition', 'units', 'split', 'dataset', 'num_images',
                  'num_images_evaluated', 'input_size', 'resize', 'interpolation', 'mean', 'std', 'threshold',
                  'top_k', 'difficult_policy', 'amp_dtype', 'head_dtype', 'logits_dtype', 'checkpoint_reported',
                  'versions', 'notes')
#: protocol fields without which metrics are not reported (ANCHORS: make every protocol choice explicit)
_REQUIRED_PROTOCOL = (('ap_definitions', 'ap_definition'), ('split',), ('input_size',))
#: pretrained_cfg fields a manifest entry may set (PretrainedCfg rejects unknown keys)
_MANIFEST_CFG_KEYS = ('input_size', 'test_input_size', 'min_input_size', 'fixed_input_size', 'interpolation',
                      'crop_pct', 'test_crop_pct', 'crop_mode', 'mean', 'std', 'pool_size', 'test_pool_size',
                      'first_conv', 'classifier', 'license', 'description', 'origin_url', 'paper_name',
                      'paper_ids', 'notes')
_REQUIRED_ENTRY_KEYS = ('architecture', 'tag', 'hf_hub_id', 'file', 'sha256', 'num_classes', 'label_names_source',
                        'dataset', 'metrics', 'recipe', 'created', 'model_args')

#: model arguments that determine the weights' tensor shapes: a manifest tag's values replace the architecture's
_WEIGHT_SHAPING_ARGS = frozenset({'backbone', 'embed_dim', 'graph_layers', 'use_gcn', 'use_ca', 'use_sa',
                                  'backbone_kwargs'})

_TRAIN_HINT = ('srdl-train --model {arch} --data coco --root /path/to/coco --recipe paper '
               '--output runs/{arch}')


# ----------------------------------------------------------------------------------------------------------------
# errors and small helpers
# ----------------------------------------------------------------------------------------------------------------
class ChecksumMismatchError(RuntimeError):
    """A weight file's sha256 differs from the one the manifest lists: the file is refused, nothing is loaded."""


class MissingPretrainedWeightsError(RuntimeError):
    """``pretrained=True`` was asked of an SRDL architecture/tag for which no weights exist.

    A subclass of ``RuntimeError``, the type timm raises for "No pretrained weights exist for ...".
    """


@dataclasses.dataclass
class PublishResult:
    """What :func:`publish` / :func:`save_pretrained_dir` produced.

    Attributes:
        repo_id: the Hub repo (``None`` for a folder written without one).
        local_dir: the folder written (``None`` after a push, whose staging folder is deleted).
        url: the Hub commit URL after a push.
        revision: the Hub commit sha after a push (pin it in the manifest as ``hf_revision``).
        sha256: sha256 of ``model.safetensors``.
        files: the file names published.
        config: the config.json written.
    """
    repo_id: Optional[str]
    local_dir: Optional[Path]
    url: Optional[str]
    revision: Optional[str]
    sha256: str
    files: Tuple[str, ...]
    config: Dict[str, Any]


def weights_dir() -> Path:
    """Folder holding ``manifest.json`` and shipped weights.

    ``$SRDL_WEIGHTS_DIR`` if set, else the repository's ``weights/`` folder (beside the ``srdl_timm`` package in a
    source checkout / editable install).
    """
    env = os.environ.get(_WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / 'weights'


def manifest_path() -> Path:
    """Path of the weights registry: ``weights_dir() / 'manifest.json'``."""
    return weights_dir() / 'manifest.json'



def verify_sha256(path: PathLike, expected: str, what: str = '') -> str:
    """Check that ``path`` has sha256 ``expected``; raise :class:`ChecksumMismatchError` otherwise.

    Args:
        path: the file to check.
        expected: the expected hex digest.
        what: where ``expected`` comes from, for the error message (e.g. a manifest entry).

    Returns:
        The digest (equal to ``expected``).

    Raises:
        ChecksumMismatchError: the digests differ.
        FileNotFoundError: ``path`` does not exist.
    """
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


def _read_json(path: PathLike, what: str) -> Any:
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'{what} not found: {path}') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} {path} is not valid JSON: {e}') from e


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write('\n')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_or_file(value: Optional[str], option: str) -> Optional[Dict[str, Any]]:
    """Parse a CLI value that is inline JSON or the path of a JSON file."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith('{'):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f'{option}: not valid JSON ({e}): {value}') from e
    else:
        data = _read_json(value, f'{option} file')
    if not isinstance(data, dict):
        raise ValueError(f'{option} must be a JSON object, got {type(data).__name__}')
    return data


def _srdl_init_params() -> Tuple[str, ...]:
    import inspect
    from .models.srdl import SRDL
    return tuple(p for p in inspect.signature(SRDL.__init__).parameters if p != 'self')


# ----------------------------------------------------------------------------------------------------------------
# what gets published
# ----------------------------------------------------------------------------------------------------------------
def _check_srdl(model: torch.nn.Module) -> None:
    from .models.srdl import SRDL
    if not isinstance(model, SRDL):
        raise TypeError(f'expected an SRDL model (timm.create_model("srdl_...")), got {type(model).__name__}')
    if not getattr(model, 'pretrained_cfg', None) or not model.pretrained_cfg.get('architecture'):
        raise ValueError('the model has no timm pretrained_cfg/architecture: build it with '
                         'timm.create_model("srdl_<variant>", ...) rather than SRDL(...) so that config.json can '
                         'name its architecture')


def srdl_model_args(model: torch.nn.Module) -> Dict[str, Any]:
    """Construction arguments that rebuild ``model`` exactly (before its weights are loaded).

    The backbone, input channels, pooling, number of classes and every SRDL hyper-parameter: node width
    ``embed_dim``, ``graph_layers``, the ablation switches ``use_gcn``/``use_ca``/``use_sa``, OE's ``oe_topk`` /
    ``oe_alpha``, the ``attention_impl`` and any JSON-serialisable ``backbone_kwargs`` the model was built with.
    ``label_embeddings`` is not needed: the nodes are the ``label_graph.node_features`` buffer in the weights.
    ``label_names`` go to config.json's top level (timm's place for them), so that loading with another
    ``num_classes`` stays possible; ``pretrained_backbone`` is left out (the weights replace the backbone).

    Args:
        model: an SRDL model.

    Returns:
        A JSON-serialisable dict for config.json's ``model_args``.
    """
    _check_srdl(model)
    args: Dict[str, Any] = dict(
        backbone=model.backbone_name,
        num_classes=int(model.num_classes),
        in_chans=int(model.in_chans),
        global_pool=model.global_pool,
        embed_dim=int(model.embed_dim),
        graph_layers=int(model.graph_layers),
        use_gcn=bool(model.use_gcn),
        use_ca=bool(model.use_ca),
        use_sa=bool(model.use_sa),
        oe_topk=int(model.object_eraser.topk),
        oe_alpha=float(model.object_eraser.alpha),
        attention_impl=model.attention_impl,
    )
    backbone_kwargs = dict(getattr(model, '_model_args', {}).get('backbone_kwargs') or {})
    backbone_kwargs = {k: v for k, v in backbone_kwargs.items() if k != 'drop_path_rate'}
    if backbone_kwargs:
        try:
            json.dumps(backbone_kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f'backbone_kwargs {backbone_kwargs!r} are not JSON-serialisable, so config.json '
                             'could not rebuild the model') from e
        args['backbone_kwargs'] = backbone_kwargs
    return args


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _normalise_metrics(
        metrics: Union[None, PathLike, Mapping[str, Any]],
        protocol: Optional[Mapping[str, Any]] = None,
) -> Tuple[Dict[str, float], Dict[str, Any], Optional[List[str]]]:
    """(metric values, protocol, label names) from an srdl-validate report / a plain dict / a JSON path."""
    source = 'metrics'
    if metrics is None:
        report: Dict[str, Any] = {}
    elif isinstance(metrics, (str, os.PathLike)):
        source = os.fspath(metrics)
        report = _read_json(metrics, 'metrics file')
        if not isinstance(report, dict):
            raise ValueError(f'metrics file {source} must hold a JSON object (an srdl-validate --output report)')
    else:
        report = dict(metrics)
    if isinstance(report.get('metrics'), Mapping):  # an srdl-validate report
        values_in = report['metrics']
    else:  # a plain {metric: value, 'protocol': {...}} dict
        values_in = {k: v for k, v in report.items() if k not in ('protocol', 'label_names')}
    proto = dict(report.get('protocol') or {})
    label_names = report.get('label_names')
    values = {str(k): float(v) for k, v in values_in.items() if _finite_number(v) and k not in _NOT_METRICS}
    proto.update(protocol or {})
    if isinstance(proto.get('dataset'), Mapping):  # srdl-validate stores the dataset's info dict
        info = proto['dataset']
        proto['dataset'] = info.get('name') or info.get('dataset')
    proto = {k: proto[k] for k in _PROTOCOL_KEYS if proto.get(k) is not None}
    if values:
        missing = [' or '.join(keys) for keys in _REQUIRED_PROTOCOL if not any(proto.get(k) for k in keys)]
        if missing:
            raise ValueError(
                f'{source}: metrics need their evaluation protocol, missing: {", ".join(missing)}. '
                'Pass the JSON report of `srdl-validate --output results.json`, or protocol=dict(...) / '
                '--protocol \'{"ap_definition": "...", "split": "...", "input_size": [3, 448, 448]}\'')
    if label_names is not None:
        label_names = [str(n) for n in label_names]
    return values, proto, label_names


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.4g}'
    if isinstance(value, (list, tuple)):
        return '(' + ', '.join(_fmt(v) for v in value) + ')'
    return str(value)


def _ordered_metrics(values: Mapping[str, float]) -> List[Tuple[str, float]]:
    known = [(k, values[k]) for k in _METRIC_NAMES if k in values]
    rest = sorted((k, v) for k, v in values.items() if k not in _METRIC_NAMES)
    return known + rest


def model_card(
        config: Mapping[str, Any],
        *,
        repo_id: Optional[str] = None,
        metrics: Optional[Mapping[str, float]] = None,
        protocol: Optional[Mapping[str, Any]] = None,
        dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        sha256: Optional[str] = None,
        num_params: Optional[int] = None,
        description: Optional[str] = None,
) -> str:
    """README.md text for a published SRDL folder: Hub metadata in YAML front matter, then the card.

    Args:
        config: the config.json written beside it.
        repo_id: Hub repo (used in the usage snippet and the model-index name).
        metrics: metric name -> value (percent), as in srdl-validate reports.
        protocol: how the metrics were measured (AP definitions, split, input size, pre-processing ...).
        dataset: dataset name for the ``datasets`` metadata and the results.
        license: license of the weights (default: the pretrained_cfg's, else apache-2.0).
        recipe: the training command.
        sha256: sha256 of model.safetensors.
        num_params: parameter count.
        description: an extra paragraph.

    Returns:
        The README text (front matter built with ``huggingface_hub.ModelCardData``).
    """
    from huggingface_hub import EvalResult, ModelCardData

    metrics = dict(metrics or {})
    protocol = dict(protocol or {})
    arch = config['architecture']
    pcfg = config.get('pretrained_cfg', {})
    margs = config.get('model_args', {})
    name = repo_id.split('/')[-1] if repo_id else arch
    dataset = dataset or protocol.get('dataset')
    license = license or pcfg.get('license') or 'apache-2.0'
    dataset_id = re.sub(r'[^a-z0-9._\-]+', '-', str(dataset).lower()).strip('-') if dataset else None
    eval_results = None
    if metrics:
        eval_results = [
            EvalResult(
                task_type='image-classification', task_name='Multi-label image classification',
                dataset_type=dataset_id or 'unknown', dataset_name=str(dataset or 'unknown'),
                dataset_split=str(protocol['split']) if protocol.get('split') else None,
                metric_type=key, metric_value=round(float(value), 4), metric_name=_METRIC_NAMES.get(key, key))
            for key, value in _ordered_metrics(metrics)]
    card_data = ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'multi-label', 'multi-label-image-classification', 'timm', 'srdl'],
        datasets=[dataset_id] if dataset_id else None, model_name=name, eval_results=eval_results)

    label_names = config.get('label_names') or []
    lines = ['---', card_data.to_yaml(), '---', f'# Model card for {name}', '',
             'SRDL (Semantic Representation and Dependency Learning) multi-label image classifier: a timm CNN '
             'backbone followed by the category-aware region head (label graph over label-name word vectors, '
             'channel and spatial category attention, per-category classifier). Object erasing (OE) is a '
             'training-time regulariser only; inference is a single forward pass returning one logit per class '
             '(apply a sigmoid for per-class probabilities).']
    if description:
        lines += ['', description]
    size = pcfg.get('input_size')
    details = [
        ('Model type', 'multi-label image classification (independent sigmoid per class)'),
        ('Architecture', f'`{arch}` — backbone `{margs.get("backbone")}`, node width {margs.get("embed_dim")}, '
                         f'{margs.get("graph_layers")} graph layer(s), use_gcn={margs.get("use_gcn")}, '
                         f'use_ca={margs.get("use_ca")}, use_sa={margs.get("use_sa")}, '
                         f'OE top-K {margs.get("oe_topk")}, alpha {margs.get("oe_alpha")}'),
        ('Classes', f'{config.get("num_classes")} (names in config.json `label_names`: '
                    + (', '.join(map(str, label_names[:8])) + (', ...' if len(label_names) > 8 else '')
                       if label_names else 'not recorded') + ')'),
    ]
    if num_params is not None:
        details.append(('Parameters (M)', f'{num_params / 1e6:.2f}'))
    if size:
        details.append(('Input', f'{size[1]} x {size[2]}, {pcfg.get("interpolation")} resize, crop_pct '
                                 f'{pcfg.get("crop_pct")} (crop_mode {pcfg.get("crop_mode")}), mean '
                                 f'{_fmt(tuple(pcfg.get("mean", ())))}, std {_fmt(tuple(pcfg.get("std", ())))}'))
    if dataset:
        details.append(('Dataset', str(dataset)))
    details.append(('Paper', 'Semantic Representation and Dependency Learning for Multi-Label Image Recognition '
                             '(Pu et al.)'))
    details.append(('Library', 'timm + srdl-timm (`import srdl_timm` registers the SRDL architectures)'))
    if sha256:
        details.append(('Weights', f'`model.safetensors`, sha256 `{sha256}`'))
    if recipe:
        details.append(('Training recipe', f'`{recipe}`'))
    lines += ['', '## Model Details'] + [f'- **{k}:** {v}' for k, v in details]

    source = f"hf-hub:{repo_id}" if repo_id else 'local-dir:/path/to/this/folder'
    lines += ['', '## Model Usage', '```python', 'import torch, timm',
              'import srdl_timm  # registers the srdl_* architectures; needed before timm reads config.json',
              'from PIL import Image', '',
              f"model = timm.create_model('{source}', pretrained=True).eval()",
              'config = timm.data.resolve_model_data_config(model)',
              'transform = timm.data.create_transform(**config, is_training=False)',
              "image = Image.open('image.jpg').convert('RGB')",
              'with torch.inference_mode():',
              '    probs = model(transform(image).unsqueeze(0)).sigmoid()[0]',
              "labels = model.pretrained_cfg['label_names']",
              'print([(labels[i], round(p.item(), 3)) for i, p in enumerate(probs) if p > 0.5])', '```',
              '', 'Fine-tune on other categories with `num_classes=N` (the classifier and the label-graph nodes '
              'are re-initialised; pass `label_embeddings=` for the new names), or start from ImageNet with '
              '`pretrained_backbone=True` instead of these weights.']

    if metrics:
        units = protocol.get('units', 'percent')
        lines += ['', '## Evaluation', '', f'| metric | value ({units}) |', '|---|---|']
        lines += [f'| {_METRIC_NAMES.get(k, k)} | {v:.2f} |' for k, v in _ordered_metrics(metrics)]
        lines += ['', '### Protocol', '']
        for key in _PROTOCOL_KEYS:
            if key not in protocol:
                continue
            value = protocol[key]
            if isinstance(value, Mapping):
                lines.append(f'- **{key}:**')
                lines += [f'  - {k}: {v}' for k, v in value.items()]
            else:
                lines.append(f'- **{key}:** {_fmt(value) if isinstance(value, (list, tuple)) else value}')
    else:
        lines += ['', '## Evaluation', '', 'No evaluation was published with these weights.']
    return '\n'.join(lines) + '\n'


def _data_config_from_protocol(protocol: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    out = {}
    if protocol.get('input_size'):
        out['input_size'] = tuple(int(v) for v in protocol['input_size'])
    for key in ('interpolation', 'mean', 'std'):
        if protocol.get(key) is not None:
            out[key] = tuple(protocol[key]) if isinstance(protocol[key], (list, tuple)) else protocol[key]
    return out or None


def save_pretrained_dir(
        model: torch.nn.Module,
        path: PathLike,
        *,
        repo_id: Optional[str] = None,
        metrics: Union[None, PathLike, Mapping[str, Any]] = None,
        protocol: Optional[Mapping[str, Any]] = None,
        dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        description: Optional[str] = None,
) -> PublishResult:
    """Write ``model`` as a timm Hub folder: model.safetensors, config.json and a README.md model card.

    The weights and config.json are written by ``timm.models.save_for_hf(..., safe_serialization=True)``;
    config.json's ``model_args`` are :func:`srdl_model_args` and its ``label_names`` the model's.

    Args:
        model: an SRDL model built with ``timm.create_model``.
        path: the folder (created; it may hold only the three files written here).
        repo_id: the Hub repo the folder is meant for (card usage snippet), if any.
        metrics: an srdl-validate JSON report (path or dict), or a dict of metric values.
        protocol: protocol fields added to / overriding the report's (AP definition, split, input size ...).
        dataset: the training/evaluation dataset's name.
        license: license of the weights.
        recipe: the command that trained the weights.
        data_config: pre-processing to record (input_size, interpolation, mean, std, crop_pct, crop_mode);
            default: the evaluation protocol's input size/interpolation/mean/std when given, else the model's.
        description: an extra paragraph for the card.

    Returns:
        A :class:`PublishResult` with ``local_dir`` set.

    Raises:
        FileExistsError: ``path`` holds other files (they would be published too).
        ValueError: metrics without their protocol, or label names that disagree with the model's.
    """
    from timm.models import save_for_hf

    _check_srdl(model)
    if repo_id is not None and not _REPO_ID_RE.match(repo_id):
        raise ValueError(f'repo_id must look like "org/name", got {repo_id!r}')
    values, proto, metric_names = _normalise_metrics(metrics, protocol)
    label_names = list(model.label_names) if model.label_names is not None else None
    source_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if label_names is None and source_names and len(source_names) == model.num_classes:
        label_names = [str(n) for n in source_names]  # a model loaded from a published folder / Hub repo
        _logger.info('label_names taken from the model\'s pretrained_cfg (the weights it was loaded from)')
    if metric_names is not None and label_names is not None and metric_names != label_names:
        raise ValueError(f'the metrics were computed for classes {metric_names[:5]}... but the model\'s label_names '
                         f'are {label_names[:5]}...: publish metrics of this model on its own classes')
    if label_names is None:
        label_names = metric_names
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label names for a model with {model.num_classes} classes')
    if label_names is None and model.num_classes:
        _logger.warning('publishing without label_names: users will not know which output is which class '
                        '(build the model with label_names=... or pass an srdl-validate report)')
    if data_config is None:
        data_config = _data_config_from_protocol(proto)

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in folder.iterdir() if p.name not in _PUBLISHED_FILES)
    if others:
        raise FileExistsError(f'{folder} already holds {others}: publish into an empty folder (everything in it '
                              'would be uploaded / found by timm\'s local-dir loader)')

    model_args = srdl_model_args(model)
    model_config: Dict[str, Any] = {}
    if label_names is not None:
        model_config['label_names'] = label_names
    saved_args = model.__dict__.get('_model_args')
    # config.json's model_args must be exactly srdl_model_args(): timm merges the factory's recorded kwargs
    # (which may hold label_embeddings arrays, pretrained_backbone=True, ...) under explicit ones otherwise
    model._model_args = {}
    try:
        save_for_hf(model, folder, model_config=model_config, model_args=model_args, safe_serialization=True,
                    data_config=dict(data_config) if data_config else None)
    finally:
        if saved_args is None:
            del model._model_args
        else:
            model._model_args = saved_args
    config = _read_json(folder / 'config.json', 'config.json')
    digest = sha256_file(folder / WEIGHTS_FILENAME)
    num_params = sum(p.numel() for p in model.parameters())
    readme = model_card(config, repo_id=repo_id, metrics=values, protocol=proto, dataset=dataset, license=license,
                        recipe=recipe, sha256=digest, num_params=num_params, description=description)
    (folder / 'README.md').write_text(readme, encoding='utf-8')
    files = tuple(sorted(p.name for p in folder.iterdir()))
    _logger.info('wrote %s: %s (model.safetensors sha256 %s)', folder, ', '.join(files), digest)
    return PublishResult(repo_id=repo_id, local_dir=folder, url=None, revision=None, sha256=digest, files=files,
                         config=config)


def publish(
        model: torch.nn.Module,
        repo_id: str,
        *,
        local_dir: Optional[PathLike] = None,
        metrics: Union[None, PathLike, Mapping[str, Any]] = None,
        protocol: Optional[Mapping[str, Any]] = None,
        private: bool = False,
        commit_message: str = 'Add SRDL weights (model.safetensors, config.json, model card)',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
        dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        description: Optional[str] = None,
) -> PublishResult:
    """Publish ``model`` to the Hugging Face Hub in timm's layout, or write that folder to ``local_dir``.

    Without ``local_dir`` the folder of :func:`save_pretrained_dir` is staged in a temporary directory and uploaded
    with ``HfApi.create_repo(exist_ok=True)`` and ``HfApi.upload_folder`` (the calls of
    ``timm.models.push_to_hf_hub``, here with safetensors only and this module's model card). That needs network
    access and a token with write access (``token`` or ``huggingface-cli login`` / ``HF_TOKEN``).

    Args:
        model: an SRDL model built with ``timm.create_model``.
        repo_id: ``org/name`` on the Hub.
        local_dir: write the folder here instead of pushing (no network).
        metrics: an srdl-validate JSON report (path or dict), or a dict of metric values.
        protocol: protocol fields added to / overriding the report's.
        private: create the repo private.
        commit_message: the Hub commit message.
        token: Hub token (default: the logged-in one).
        revision: branch to push to.
        create_pr: open a pull request instead of committing.
        dataset / license / recipe / data_config / description: see :func:`save_pretrained_dir`.

    Returns:
        A :class:`PublishResult`; after a push ``url`` and ``revision`` (commit sha) are set.
    """
    card = dict(metrics=metrics, protocol=protocol, dataset=dataset, license=license, recipe=recipe,
                data_config=data_config, description=description)
    if local_dir is not None:
        return save_pretrained_dir(model, local_dir, repo_id=repo_id, **card)
    with tempfile.TemporaryDirectory() as tmp:
        staged = save_pretrained_dir(model, tmp, repo_id=repo_id, **card)
        pushed = push_folder(tmp, repo_id, private=private, commit_message=commit_message, token=token,
                             revision=revision, create_pr=create_pr)
    return dataclasses.replace(pushed, config=staged.config)


def push_folder(
        folder: PathLike,
        repo_id: str,
        *,
        private: bool = False,
        commit_message: str = 'Add SRDL weights (model.safetensors, config.json, model card)',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
) -> PublishResult:
    """Upload a folder written by :func:`save_pretrained_dir` to the Hub (``create_repo`` + ``upload_folder``).

    Args:
        folder: the folder; it must hold exactly config.json, model.safetensors and README.md.
        repo_id: ``org/name``.
        private / commit_message / token / revision / create_pr: as in :func:`publish`.

    Returns:
        A :class:`PublishResult` with the commit ``url`` and ``revision``.
    """
    import timm
    from huggingface_hub import HfApi

    folder = Path(folder)
    files = tuple(sorted(p.name for p in folder.iterdir()))
    if files != tuple(sorted(_PUBLISHED_FILES)):
        raise ValueError(f'{folder} holds {list(files)}; a published folder holds exactly {sorted(_PUBLISHED_FILES)} '
                         '(write it with srdl-publish --local-dir / save_pretrained_dir)')
    config = _read_json(folder / 'config.json', 'config.json')
    digest = sha256_file(folder / WEIGHTS_FILENAME)
    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                             commit_message=commit_message)
    _logger.info('pushed %s to %s (commit %s)', ', '.join(files), repo_id, info.oid)
    return PublishResult(repo_id=repo_id, local_dir=None, url=info.commit_url, revision=info.oid, sha256=digest,
                         files=files, config=config)


# ----------------------------------------------------------------------------------------------------------------
# training checkpoints -> model
# ----------------------------------------------------------------------------------------------------------------
def _config_beside(checkpoint: Path) -> Optional[Path]:
    for name in ('config.json', 'train_config.json', 'args.json'):
        candidate = checkpoint.parent / name
        if candidate.is_file():
            return candidate
    return None


def _model_from_run_config(config: Mapping[str, Any], config_file: str) -> Tuple[Optional[str], Dict[str, Any],
                                                                              Optional[List[str]], Dict[str, Any]]:
    """(model name, model args, label names, data config) from a timm config.json or a training args JSON."""
    params = set(_srdl_init_params())
    data_config: Dict[str, Any] = {}
    if 'architecture' in config:  # timm Hub config.json
        name = config['architecture']
        args = dict(config.get('model_args') or {})
        pcfg = config.get('pretrained_cfg') or {}
        data_config = {k: pcfg[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
                       if pcfg.get(k) is not None}
    else:  # a training run's resolved arguments (srdl-train's train_config.json)
        name = config.get('model')
        args = dict(config.get('model_args') or config.get('model_kwargs') or {})
        run_data = config.get('data_config') or {}
        data_config = {k: run_data[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct',
                                                'crop_mode') if run_data.get(k) is not None}
        for key, value in config.items():
            if key in params and key not in _NOT_MODEL_ARGS and value is not None:
                args.setdefault(key, value)
    if 'num_classes' in config and config['num_classes'] is not None:
        args.setdefault('num_classes', config['num_classes'])
    label_names = config.get('label_names')
    if not isinstance(args, dict):
        raise ValueError(f'{config_file}: model_args must be a JSON object')
    return name, args, ([str(n) for n in label_names] if label_names else None), data_config


def load_checkpoint_model(
        checkpoint: PathLike,
        model_name: Optional[str] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        config: Optional[PathLike] = None,
        label_names: Optional[Sequence[str]] = None,
) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild an SRDL model from a training checkpoint (safetensors weights + the run's resolved config).

    The model name and arguments come from ``config`` — by default ``config.json``, ``train_config.json`` (written
    by srdl-train) or ``args.json`` beside the checkpoint: a timm Hub config (``architecture`` + ``model_args``) or a
    training run's arguments (``model``, ``model_kwargs``/``model_args``, top-level SRDL arguments such as
    ``use_ca`` / ``oe_topk``, ``label_names`` and ``data_config``) — with ``model_name`` /
    ``model_args`` overriding it. ``num_classes`` and ``embed_dim`` missing from both are read from the checkpoint's
    tensor shapes. The weights are then loaded strictly: any missing, unexpected or mis-shaped tensor is an error
    (a wrong config would otherwise publish partly random weights).

    Args:
        checkpoint: the ``.safetensors`` weights (a ``module.`` prefix from DDP is removed).
        model_name: timm model name (overrides the config's).
        model_args: construction arguments (override the config's).
        config: the run's JSON config (default: found beside the checkpoint).
        label_names: class names (override the config's).

    Returns:
        ``(model, data_config)``: the model in eval mode and the pre-processing recorded in the config (may be
        empty; srdl-publish records it in config.json unless --data-config or the metrics' protocol says otherwise).

    Raises:
        ValueError: not a safetensors file, no model name, or the weights do not fit the configured model.
    """
    import safetensors.torch
    import timm
    from timm.models import clean_state_dict

    checkpoint = Path(checkpoint)
    if checkpoint.suffix != '.safetensors':
        raise ValueError(f'--checkpoint {checkpoint}: only .safetensors weights are published (pickled .pth/.bin '
                         'files are not); save the model\'s state_dict with safetensors.torch.save_file')
    if not checkpoint.is_file():
        raise FileNotFoundError(f'--checkpoint file not found: {checkpoint}')
    config_file = Path(config) if config is not None else _config_beside(checkpoint)
    name, args, names, data_config = None, {}, None, {}
    if config_file is not None:
        run_config = _read_json(config_file, 'run config')
        if not isinstance(run_config, dict):
            raise ValueError(f'run config {config_file} must be a JSON object')
        name, args, names, data_config = _model_from_run_config(run_config, str(config_file))
        _logger.info('model configuration from %s', config_file)
    name = model_name or name
    if not name:
        raise ValueError(f'no model name for {checkpoint}: pass --model NAME (no config.json/args.json with '
                         '"architecture" or "model" found beside the checkpoint; or pass --config)')
    args.update(model_args or {})
    for key in _NOT_MODEL_ARGS - {'label_names', 'drop_rate', 'drop_path_rate'}:
        args.pop(key, None)
    if label_names is not None:
        names = [str(n) for n in label_names]
    if names is not None:
        args['label_names'] = names

    state = clean_state_dict(safetensors.torch.load_file(os.fspath(checkpoint), device='cpu'))
    nodes = state.get('label_graph.node_features')
    if 'num_classes' not in args and 'classifier.bias' in state:
        args['num_classes'] = int(state['classifier.bias'].shape[0])
    if nodes is not None:
        args.setdefault('embed_dim', int(nodes.shape[1]))
        if nodes.shape[0] == args.get('num_classes'):
            args['label_embeddings'] = nodes  # the checkpoint's own nodes: no random-node placeholder
    where = f'{checkpoint}' + (f' with the configuration of {config_file}' if config_file else '')
    try:
        model = timm.create_model(name, pretrained=False, **args)
    except TypeError as e:
        raise ValueError(f'cannot build {name} from {where}: {e}') from e
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f'the weights in {checkpoint} do not fit {name}({_short(args)}): {e}. Check the '
                         'model arguments (config.json/args.json beside the checkpoint, --model-args).') from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f'the weights in {checkpoint} do not fit {name}({_short(args)}): missing {result.missing_keys[:6]}, '
            f'unexpected {result.unexpected_keys[:6]}. Check the model arguments (use_gcn/use_ca/use_sa, '
            'graph_layers, backbone ...) in the config beside the checkpoint or --model-args.')
    model.eval()
    return model, data_config


def _short(args: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in args.items() if k not in ('label_names', 'label_embeddings'))


# ----------------------------------------------------------------------------------------------------------------
# the registry: weights/manifest.json
# ----------------------------------------------------------------------------------------------------------------
def _empty_manifest() -> Dict[str, Any]:
    return {'schema_version': MANIFEST_SCHEMA_VERSION, 'weights': []}


def _validate_entry(entry: Any, index: int, where: str) -> Dict[str, Any]:
    label = f'{where} weights[{index}]'
    if not isinstance(entry, dict):
        raise ValueError(f'{label} must be a JSON object')
    missing = [k for k in _REQUIRED_ENTRY_KEYS if k not in entry]
    if missing:
        raise ValueError(f'{label} ({entry.get("architecture")}.{entry.get("tag")}) lacks required fields {missing} '
                         '(schema: weights/README.md)')
    label = f'{where} entry {entry["architecture"]}.{entry["tag"]}'
    if not isinstance(entry['architecture'], str) or not entry['architecture'].startswith('srdl_'):
        raise ValueError(f'{label}: architecture must be an srdl_* model name, got {entry["architecture"]!r}')
    if not isinstance(entry['tag'], str) or not _TAG_RE.match(entry['tag']):
        raise ValueError(f'{label}: tag must match {_TAG_RE.pattern}, got {entry["tag"]!r}')
    if entry['file'] is None and entry['hf_hub_id'] is None:
        raise ValueError(f'{label}: needs a file under weights/ or an hf_hub_id (a tag exists only for weights '
                         'that exist)')
    if entry['file'] is not None:
        f = entry['file']
        if not isinstance(f, str) or not f.endswith('.safetensors') or os.path.isabs(f) or '..' in Path(f).parts:
            raise ValueError(f'{label}: file must be a relative .safetensors path inside weights/, got {f!r}')
    if entry['hf_hub_id'] is not None and not (isinstance(entry['hf_hub_id'], str)
                                               and _REPO_ID_RE.match(entry['hf_hub_id'])):
        raise ValueError(f'{label}: hf_hub_id must be "org/name" or null, got {entry["hf_hub_id"]!r}')
    if entry.get('hf_revision') is not None and not isinstance(entry['hf_revision'], str):
        raise ValueError(f'{label}: hf_revision must be a string (commit sha) or null')
    if not isinstance(entry['sha256'], str) or not _SHA256_RE.match(entry['sha256']):
        raise ValueError(f'{label}: sha256 must be 64 lower-case hex digits, got {entry["sha256"]!r}')
    if not isinstance(entry['num_classes'], int) or entry['num_classes'] < 1:
        raise ValueError(f'{label}: num_classes must be a positive int, got {entry["num_classes"]!r}')
    names = entry.get('label_names')
    if names is not None and (not isinstance(names, list) or len(names) != entry['num_classes']):
        raise ValueError(f'{label}: label_names must be a list of num_classes={entry["num_classes"]} names or null')
    if not isinstance(entry['model_args'], dict):
        raise ValueError(f'{label}: model_args must be a JSON object (config.json model_args)')
    if entry['model_args'].get('num_classes', entry['num_classes']) != entry['num_classes']:
        raise ValueError(f'{label}: model_args.num_classes differs from num_classes')
    metrics = entry['metrics']
    if not isinstance(metrics, dict) or not isinstance(metrics.get('values'), dict) or not metrics['values']:
        raise ValueError(f'{label}: metrics must be {{"values": {{...}}, "protocol": {{...}}}} with at least one value')
    protocol = metrics.get('protocol') or {}
    lacking = [' or '.join(keys) for keys in _REQUIRED_PROTOCOL if not any(protocol.get(k) for k in keys)]
    if lacking:
        raise ValueError(f'{label}: metrics.protocol lacks {lacking}')
    cfg = entry.get('pretrained_cfg') or {}
    unknown = sorted(set(cfg) - set(_MANIFEST_CFG_KEYS))
    if unknown:
        raise ValueError(f'{label}: pretrained_cfg fields {unknown} are not allowed (allowed: {_MANIFEST_CFG_KEYS})')
    return entry


def load_manifest(path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Read and validate the weights registry.

    Args:
        path: the manifest (default :func:`manifest_path`).

    Returns:
        ``{'schema_version': 1, 'weights': [entry, ...], ...}``; an empty registry when the default manifest does
        not exist (an installed package without the repository's ``weights/`` folder).

    Raises:
        ValueError: malformed JSON, unknown schema version, an invalid or duplicated entry (the message names the
            file and the entry).
    """
    explicit = path is not None
    path = Path(path) if explicit else manifest_path()
    if not path.is_file():
        if explicit:
            raise FileNotFoundError(f'weights manifest not found: {path}')
        _logger.debug('no weights manifest at %s: no SRDL pretrained tags', path)
        return _empty_manifest()
    data = _read_json(path, 'weights manifest')
    if not isinstance(data, dict) or data.get('schema_version') != MANIFEST_SCHEMA_VERSION \
            or not isinstance(data.get('weights'), list):
        raise ValueError(f'{path}: expected {{"schema_version": {MANIFEST_SCHEMA_VERSION}, "weights": [...]}} '
                         '(schema: weights/README.md)')
    seen = set()
    digests: Dict[Tuple[str, ...], Tuple[str, str]] = {}  # weight location -> (sha256, entry name)
    for i, entry in enumerate(data['weights']):
        _validate_entry(entry, i, str(path))
        key = (entry['architecture'], entry['tag'])
        if key in seen:
            raise ValueError(f'{path}: {key[0]}.{key[1]} is listed twice')
        seen.add(key)
        name = f'{key[0]}.{key[1]}'
        locations = [('file', os.path.normpath(entry['file']))] if entry['file'] else []
        if entry['hf_hub_id']:
            locations.append(('hub', entry['hf_hub_id'], entry.get('hf_revision') or ''))
        for location in locations:
            other = digests.setdefault(location, (entry['sha256'], name))
            if other[0] != entry['sha256']:
                raise ValueError(f'{path}: {name} and {other[1]} name the same weights ({location[1]}) with '
                                 'different sha256')
    return data


def _entry_file(entry: Mapping[str, Any], base: Path) -> Optional[Path]:
    return (base / entry['file']).resolve() if entry.get('file') else None


def _hub_id(entry: Mapping[str, Any]) -> Optional[str]:
    if not entry.get('hf_hub_id'):
        return None
    return entry['hf_hub_id'] + (f'@{entry["hf_revision"]}' if entry.get('hf_revision') else '')


def manifest_pretrained_cfgs(
        base_cfgs: Mapping[str, Mapping[str, Any]],
        path: Optional[PathLike] = None,
) -> Dict[str, Dict[str, Any]]:
    """timm pretrained cfgs ``{'<architecture>.<tag>': cfg}`` for the manifest's weights that exist.

    An entry becomes a tag when its file exists under ``weights/`` (``file`` = its absolute path; loads offline)
    or it names a Hub repo (``hf_hub_id``, pinned to ``hf_revision`` when given, ``hf_hub_filename`` =
    ``model.safetensors``). An entry whose file is missing and that has no Hub repo is skipped with a warning:
    the registry only offers weights that exist. Each cfg starts from the architecture's base cfg and takes the
    entry's ``pretrained_cfg`` (pre-processing), ``num_classes`` and ``label_names``.

    Args:
        base_cfgs: the untagged cfg of each SRDL architecture (architecture name -> cfg dict).
        path: the manifest (default :func:`manifest_path`).

    Returns:
        Cfg dicts to merge into ``generate_default_cfgs``'s input.

    Raises:
        ValueError: an entry names an architecture not in ``base_cfgs`` (or the manifest is malformed).
    """
    manifest_file = Path(path) if path is not None else manifest_path()
    data = load_manifest(path)
    base_dir = manifest_file.parent
    out: Dict[str, Dict[str, Any]] = {}
    for entry in data['weights']:
        arch, tag = entry['architecture'], entry['tag']
        if arch not in base_cfgs:
            raise ValueError(f'{manifest_file} entry {arch}.{tag}: unknown architecture {arch!r} '
                             f'(SRDL architectures: {sorted(base_cfgs)})')
        file = _entry_file(entry, base_dir)
        has_file = file is not None and file.is_file()
        if file is not None and not has_file:
            if entry.get('hf_hub_id'):
                _logger.info('%s.%s: %s not on disk; the tag loads from the Hub (%s)', arch, tag, file,
                             entry['hf_hub_id'])
            else:
                _logger.warning('%s lists %s.%s but its weight file %s does not exist: tag not registered',
                                manifest_file, arch, tag, file)
                continue
        cfg = dict(base_cfgs[arch])
        cfg.update(entry.get('pretrained_cfg') or {})
        for key in ('input_size', 'test_input_size', 'min_input_size', 'mean', 'std', 'pool_size',
                    'test_pool_size'):
            if isinstance(cfg.get(key), list):
                cfg[key] = tuple(cfg[key])
        cfg.update(
            url='',
            file=str(file) if has_file else None,
            hf_hub_id=_hub_id(entry),
            hf_hub_filename=WEIGHTS_FILENAME if entry.get('hf_hub_id') else None,
            num_classes=entry['num_classes'],
            label_names=tuple(entry['label_names']) if entry.get('label_names') else None,
        )
        cfg.setdefault('description', f'SRDL weights trained on {entry["dataset"]} (weights/manifest.json)')
        out[f'{arch}.{tag}'] = cfg
    return out


def with_manifest_tags(
        base_cfgs: Mapping[str, Mapping[str, Any]],
        path: Optional[PathLike] = None,
) -> Dict[str, Dict[str, Any]]:
    """``generate_default_cfgs`` input: the manifest's tags, and the untagged cfg of architectures without any.

    As in timm's own registry, an architecture with weights is listed only under its tags (``timm.list_pretrained``
    shows ``srdl_x.tag``, not also a bare ``srdl_x``); its first tag is the default, so
    ``create_model('srdl_x', pretrained=True)`` loads it. Architectures without weights keep their untagged cfg.

    Args:
        base_cfgs: the untagged cfg of each SRDL architecture.
        path: the manifest (default :func:`manifest_path`).

    Returns:
        ``{'arch' | 'arch.tag': cfg}``.
    """
    tags = manifest_pretrained_cfgs(base_cfgs, path)
    with_weights = {name.split('.', 1)[0] for name in tags}
    out: Dict[str, Dict[str, Any]] = {arch: dict(cfg) for arch, cfg in base_cfgs.items() if arch not in with_weights}
    out.update(tags)
    return out


def _source_of(cfg: Any) -> Tuple[str, Any]:
    """Where timm will read the weights from (mirrors timm.models._builder._resolve_pretrained_source)."""
    if cfg.source == 'hf-hub':
        return 'hf-hub', cfg.hf_hub_id
    if cfg.source == 'local-dir':
        return 'local-dir', cfg.file
    if cfg.state_dict:
        return 'state_dict', None
    if cfg.file:
        return 'file', cfg.file
    if cfg.hf_hub_id:
        return 'hf-hub', cfg.hf_hub_id
    if cfg.url:
        return 'url', cfg.url
    return '', None


def _missing_weights_message(variant: str, tag: Optional[str]) -> str:
    import timm
    name = f'{variant}.{tag}' if tag else variant
    available = sorted(timm.list_pretrained('srdl_*'))
    return (
        f'No pretrained SRDL weights exist for {name}. SRDL weights are trained per dataset, and '
        + (f'the SRDL weights that exist are: {", ".join(available)}. ' if available else
           'none are published or shipped yet (weights/manifest.json lists none that exist here). ')
        + 'Train them: `' + _TRAIN_HINT.format(arch=variant) + '`; publish them: '
        f'`srdl-publish --checkpoint runs/{variant}/<weights>.safetensors --repo-id <org>/{variant}.<dataset>` '
        f"(then timm.create_model('hf-hub:<org>/{variant}.<dataset>', pretrained=True)), or write a folder with "
        "`--local-dir DIR` (timm.create_model('local-dir:DIR', pretrained=True)). A local file loads with "
        "pretrained_cfg_overlay=dict(file='weights.safetensors'). For an ImageNet-initialised backbone only, use "
        'pretrained=False, pretrained_backbone=True.')


def check_pretrained_weights(variant: str, model_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Checks made before an SRDL model's pretrained weights are read (called by the model factory).

    1. Some weight source exists, else :class:`MissingPretrainedWeightsError` saying how to train
       (``srdl-train``) and publish (``srdl-publish``) weights.
    2. A ``file`` source exists (timm would raise a bare ``FileNotFoundError``).
    3. A weight listed in the manifest — the same file under ``weights/``, or the same Hub repo and revision —
       has the manifest's sha256 (a Hub file is fetched to the cache first, by the download timm then reuses),
       else :class:`ChecksumMismatchError`.
    4. When the resolved cfg is a manifest tag, the entry's ``model_args`` are applied: those that shape the
       weights (backbone, embed_dim, graph_layers, use_gcn/use_ca/use_sa, backbone_kwargs) replace the
       architecture's defaults, the others (num_classes, in_chans, global_pool, oe_*, attention_impl) are only
       defaults, so that e.g. ``num_classes=N`` still re-initialises the category head.

    Args:
        variant: architecture name.
        model_kwargs: the factory's keyword arguments (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``
            and the model's arguments).

    Returns:
        The keyword arguments to build the model with.
    """
    from timm.models import resolve_pretrained_cfg

    kwargs = dict(model_kwargs)
    pretrained_cfg = kwargs.get('pretrained_cfg')
    cache_dir = kwargs.get('cache_dir')
    try:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg,
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    except RuntimeError as e:  # timm: "Invalid pretrained tag (x) for arch."
        if isinstance(pretrained_cfg, str) and 'Invalid pretrained tag' in str(e):
            raise MissingPretrainedWeightsError(_missing_weights_message(variant, pretrained_cfg)) from e
        raise
    kind, location = _source_of(cfg)
    if not kind:
        raise MissingPretrainedWeightsError(_missing_weights_message(variant, cfg.tag))
    if kind == 'file' and not os.path.isfile(location):
        raise FileNotFoundError(f'pretrained weights file not found: {location} (pretrained_cfg file= of {variant})')

    mpath = manifest_path()
    data = load_manifest()
    for entry in data['weights']:
        if entry['architecture'] == variant and entry['tag'] == cfg.tag:
            for key, value in entry['model_args'].items():
                if key in _WEIGHT_SHAPING_ARGS:
                    if key in kwargs and kwargs[key] != value:
                        _logger.info('%s.%s: %s=%r (the weights\' value) replaces %r', variant, cfg.tag, key, value,
                                     kwargs[key])
                    kwargs[key] = value
                else:
                    kwargs.setdefault(key, value)
        what = f'{mpath} entry {entry["architecture"]}.{entry["tag"]}'
        if kind == 'file':
            file = _entry_file(entry, mpath.parent)
            if file is not None and file.is_file() and os.path.samefile(file, location):
                verify_sha256(location, entry['sha256'], what)
        elif kind == 'hf-hub' and entry.get('hf_hub_id'):
            repo, _, rev = str(location).partition('@')
            if repo == entry['hf_hub_id'] and (rev or None) == (entry.get('hf_revision') or None):
                from timm.models._hub import download_from_hf
                filename = cfg.hf_hub_filename or WEIGHTS_FILENAME
                cached = download_from_hf(location, filename, cache_dir=cache_dir)
                verify_sha256(cached, entry['sha256'], f'{what} ({entry["hf_hub_id"]}/{filename})')
    return kwargs


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + '.', suffix='.tmp', dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    """Add a published folder's weights to the registry (``weights/manifest.json``).

    Args:
        folder: a folder written by :func:`save_pretrained_dir` (config.json + model.safetensors).
        tag: the pretrained tag; the weights then load as ``timm.create_model('<architecture>.<tag>',
            pretrained=True)``.
        dataset: what the weights were trained and evaluated on.
        recipe: the command that trained them.
        label_names_source: where the class names / order come from (e.g. ``srdl_timm.data.label_sets.COCO_CLASSES``).
        metrics: the srdl-validate report (path or dict) of these weights; its protocol is stored with the values.
        protocol: protocol fields added to / overriding the report's.
        ship: copy model.safetensors to ``weights/<architecture>.<tag>.safetensors`` (offline use).
        hf_hub_id: the Hub repo the folder was pushed to, if any.
        hf_revision: the Hub commit holding exactly this file (pins the sha256).
        manifest: the manifest to edit (default :func:`manifest_path`; created if missing).
        replace: replace an existing entry with the same architecture and tag.
        notes: free text.

    Returns:
        The entry written.
    """
    folder = Path(folder)
    config = _read_json(folder / 'config.json', 'published config.json')
    weights = folder / WEIGHTS_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f'{weights} not found: register a folder written by srdl-publish')
    if not ship and not hf_hub_id:
        raise ValueError(f'{tag}: a manifest entry needs weights that exist: ship the file into weights/ '
                         '(ship=True / --ship) or give the Hub repo it was pushed to')
    values, proto, _ = _normalise_metrics(metrics, protocol)
    if not values:
        raise ValueError(f'{tag}: a manifest entry needs the metrics of these weights (an srdl-validate report)')
    mfile = Path(manifest) if manifest is not None else manifest_path()
    data = load_manifest(mfile) if mfile.is_file() else _empty_manifest()
    arch = config['architecture']
    kept = [e for e in data['weights'] if (e['architecture'], e['tag']) != (arch, tag)]
    if len(kept) != len(data['weights']) and not replace:
        raise ValueError(f'{mfile} already lists {arch}.{tag}; pass replace=True (--replace) to overwrite it')
    digest = sha256_file(weights)
    rel = None
    if ship:
        rel = f'{arch}.{tag}.safetensors'
        _copy_atomic(weights, mfile.parent / rel)
        verify_sha256(mfile.parent / rel, digest, f'the copy of {weights}')
    pcfg = config.get('pretrained_cfg') or {}
    entry = {
        'architecture': arch,
        'tag': tag,
        'hf_hub_id': hf_hub_id,
        'hf_revision': hf_revision,
        'file': rel,
        'sha256': digest,
        'size_bytes': weights.stat().st_size,
        'num_classes': int(config['num_classes']),
        'label_names': config.get('label_names'),
        'label_names_source': label_names_source,
        'dataset': dataset,
        'metrics': {'values': values, 'protocol': proto},
        'recipe': recipe,
        'created': datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        'model_args': config.get('model_args') or {},
        'pretrained_cfg': {k: pcfg[k] for k in _MANIFEST_CFG_KEYS if pcfg.get(k) is not None},
    }
    if notes:
        entry['notes'] = notes
    _validate_entry(entry, len(data['weights']), str(mfile))
    data['weights'] = kept + [entry]
    _write_json_atomic(mfile, data)
    _logger.info('registered %s.%s in %s (sha256 %s)', arch, tag, mfile, digest)
    return entry


def verify_manifest(path: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """Check every weight of the manifest that is on this machine against its sha256.

    Args:
        path: the manifest (default :func:`manifest_path`).
        cache_dir: Hugging Face cache to look in for Hub-only entries (nothing is downloaded).

    Returns:
        ``[(architecture.tag, status)]`` with status ``'ok'``, ``'MISMATCH ...'``, ``'missing'`` or
        ``'not cached'``.
    """
    from huggingface_hub import try_to_load_from_cache

    mfile = Path(path) if path is not None else manifest_path()
    data = load_manifest(mfile)
    report = []
    for entry in data['weights']:
        name = f'{entry["architecture"]}.{entry["tag"]}'
        file = _entry_file(entry, mfile.parent)
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
    """A markdown table of the registry, for MODEL_CARD.md.

    Args:
        manifest: a manifest path or an already loaded manifest dict (default :func:`manifest_path`).

    Returns:
        Markdown: one row per weight (model name, dataset, classes, metrics, protocol, where, sha256, recipe), or a
        sentence saying that none exist yet and how to make them.
    """
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


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``srdl-publish``."""
    p = argparse.ArgumentParser(
        prog='srdl-publish',
        description='Publish SRDL weights in timm\'s Hugging Face Hub layout (model.safetensors, config.json, '
                    'README.md model card): push to the Hub, or write the folder with --local-dir (no network). '
                    'Optionally register the weights in weights/manifest.json.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--checkpoint', default=None,
                   help='training checkpoint weights (.safetensors); the run\'s config.json / train_config.json / '
                        'args.json beside it gives the model name and arguments')
    g.add_argument('--model', default=None,
                   help='timm model name; without --checkpoint the model is built with pretrained=True '
                        '(e.g. local-dir:DIR or a manifest tag)')
    g.add_argument('--model-args', default=None, help='model arguments as inline JSON or a JSON file')
    g.add_argument('--config', default=None, help='the run\'s JSON config (default: beside --checkpoint)')
    g.add_argument('--label-names', default=None, help='text file with one class name per line')
    g = p.add_argument_group('destination')
    g.add_argument('--repo-id', default=None, help='Hub repo org/name')
    g.add_argument('--local-dir', default=None, help='write the folder here instead of pushing (no network)')
    g.add_argument('--private', action='store_true', help='create the Hub repo private')
    g.add_argument('--commit-message', default='Add SRDL weights (model.safetensors, config.json, model card)')
    g.add_argument('--revision', default=None, help='Hub branch to push to')
    g.add_argument('--create-pr', action='store_true', help='open a Hub pull request instead of committing')
    g.add_argument('--token', default=None, help='Hub token (default: HF_TOKEN / the logged-in token)')
    g = p.add_argument_group('model card')
    g.add_argument('--metrics', default=None, help='JSON report of srdl-validate --output for these weights')
    g.add_argument('--protocol', default=None, help='protocol fields (inline JSON or file) added to the report\'s')
    g.add_argument('--dataset', default=None, help='dataset name (default: the report\'s)')
    g.add_argument('--license', default=None, help='license of the weights (default: apache-2.0)')
    g.add_argument('--recipe', default=None, help='the training command')
    g.add_argument('--data-config', default=None,
                   help='pre-processing to record (inline JSON or file: input_size, interpolation, mean, std, '
                        'crop_pct, crop_mode); default: the report\'s, else the model\'s')
    g.add_argument('--description', default=None, help='an extra paragraph for the model card')
    g = p.add_argument_group('registry (weights/manifest.json)')
    g.add_argument('--manifest-tag', default=None, help='also list the weights in the manifest under this tag')
    g.add_argument('--ship', action='store_true',
                   help='with --manifest-tag: copy model.safetensors into weights/ (offline use)')
    g.add_argument('--manifest', default=None, help='manifest to edit (default: weights/manifest.json)')
    g.add_argument('--label-names-source', default=None, help='with --manifest-tag: where the class names come from')
    g.add_argument('--replace', action='store_true', help='with --manifest-tag: replace an existing entry')
    g.add_argument('--manifest-markdown', action='store_true', help='print the manifest as a markdown table and exit')
    g.add_argument('--verify-manifest', action='store_true',
                   help='check the sha256 of every manifest weight on this machine and exit (1 on a mismatch)')
    p.add_argument('--log-level', default='INFO')
    return p


def _read_label_names(path: str) -> List[str]:
    with open(path, 'r', encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f'--label-names {path} holds no names')
    return names


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``srdl-publish`` console script; returns the exit status (2 on a usage/input error, printed to stderr)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return _main(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, MissingPretrainedWeightsError,
            ChecksumMismatchError) as e:
        print(f'srdl-publish: error: {e}', file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.manifest_markdown:
        print(manifest_markdown(args.manifest), end='')
        return 0
    if args.verify_manifest:
        report = verify_manifest(args.manifest)
        for name, status in report:
            print(f'{name}: {status}')
        if not report:
            print('the manifest lists no weights')
        return 1 if any(s.startswith('MISMATCH') for _, s in report) else 0
    if not args.checkpoint and not args.model:
        raise SystemExit('srdl-publish: give --checkpoint FILE.safetensors (with its run config) or --model NAME')
    if not args.repo_id and not args.local_dir:
        raise SystemExit('srdl-publish: give --repo-id ORG/NAME (push) and/or --local-dir DIR (write a folder)')
    if args.manifest_tag and not (args.ship or not args.local_dir):
        raise SystemExit('srdl-publish: --manifest-tag needs weights that exist: add --ship (copy into weights/) '
                         'or push to the Hub (no --local-dir)')
    if args.manifest_tag and not args.metrics:
        raise SystemExit('srdl-publish: --manifest-tag needs --metrics (an srdl-validate report of these weights)')

    import timm
    import srdl_timm  # noqa: F401  registers the SRDL architectures

    model_args = _json_or_file(args.model_args, '--model-args') or {}
    label_names = _read_label_names(args.label_names) if args.label_names else None
    data_config = _json_or_file(args.data_config, '--data-config')
    protocol = _json_or_file(args.protocol, '--protocol')
    if args.checkpoint:
        model, run_data_config = load_checkpoint_model(args.checkpoint, args.model, model_args, args.config,
                                                       label_names)
        if data_config is None and run_data_config:
            # the run's eval pre-processing, with what the metrics were measured at taking precedence
            measured = _data_config_from_protocol(_normalise_metrics(args.metrics, protocol)[1]) or {}
            data_config = {**run_data_config, **measured}
    else:
        if label_names is not None:
            model_args['label_names'] = label_names
        model = timm.create_model(args.model, pretrained=True, **model_args).eval()
    card = dict(metrics=args.metrics, protocol=protocol, dataset=args.dataset, license=args.license,
                recipe=args.recipe, data_config=data_config, description=args.description)
    with tempfile.TemporaryDirectory() as tmp:
        # the folder that is pushed is the folder that gets registered (same bytes, same sha256)
        staged = save_pretrained_dir(model, args.local_dir or tmp, repo_id=args.repo_id, **card)
        result = staged
        if not args.local_dir:
            result = push_folder(tmp, args.repo_id, private=args.private, commit_message=args.commit_message,
                                 token=args.token, revision=args.revision, create_pr=args.create_pr)
        where = result.local_dir if result.local_dir is not None else result.url
        print(f'published {", ".join(result.files)} -> {where} (model.safetensors sha256 {result.sha256})')
        if args.manifest_tag:
            dataset = args.dataset or _normalise_metrics(args.metrics, protocol)[1].get('dataset')
            if not dataset:
                raise SystemExit('srdl-publish: --manifest-tag needs --dataset (the metrics report names none)')
            entry = register_weights(
                staged.local_dir, tag=args.manifest_tag, dataset=dataset, recipe=args.recipe or 'not recorded',
                label_names_source=args.label_names_source or 'config.json label_names of the published folder',
                metrics=args.metrics, protocol=protocol, ship=args.ship,
                hf_hub_id=result.repo_id if result.url else None, hf_revision=result.revision,
                manifest=args.manifest, replace=args.replace)
            print(f'registered {entry["architecture"]}.{entry["tag"]} in {args.manifest or manifest_path()}')
    return 0


if __name__ == '__main__':
    # run the package's copy of this module (srdl_timm imports it), so that its error classes are the ones raised
    from srdl_timm.hub import main as _package_main
    sys.exit(_package_main())
