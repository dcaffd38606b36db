"""The README.md model card of a published SRDL folder / Hub repo, and the metrics + protocol it reports.

The front matter is Hub metadata (``huggingface_hub.ModelCardData``); ``datasets`` and the model-index only with a
Hub dataset id, never a local dataset's name. The usage snippet runs as written; the citation invents no venue.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import InputError
from .labels import TUNING_RULES, LabelThresholds
from .models.pretrained import REQUIRED_PROTOCOL
from .utils import PathLike

__all__ = ['PAPER_TITLE', 'PAPER_AUTHORS', 'CITATION', 'METRIC_NAMES', 'normalise_metrics', 'usage_snippet',
           'model_card']

PAPER_TITLE = 'Semantic Representation and Dependency Learning for Multi-Label Image Recognition'
PAPER_AUTHORS = ('Tao Pu', 'Mingzhan Sun', 'Hefeng Wu', 'Tianshui Chen', 'Ling Tian', 'Liang Lin')
#: BibTeX of the SRDL paper with exactly what its text states (a preprint submitted to Elsevier; no venue or year)
CITATION = ('@misc{pu_srdl,\n'
            f'  title  = {{{PAPER_TITLE}}},\n'
            '  author = {' + ' and '.join(f'{n.split()[-1]}, {" ".join(n.split()[:-1])}' for n in PAPER_AUTHORS)
            + '},\n'
            '  note   = {Preprint submitted to Elsevier}\n'
            '}')

#: metrics shown first in model cards / tables, with readable names
METRIC_NAMES = {
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
PROTOCOL_KEYS = ('ap_definitions', 'ap_definition', 'units', 'split', 'dataset', 'num_images',
                 'num_images_evaluated', 'input_size', 'resize', 'interpolation', 'mean', 'std', 'threshold',
                 'top_k', 'difficult_policy', 'amp_dtype', 'head_dtype', 'logits_dtype', 'checkpoint_reported',
                 'versions', 'notes')
#: a Hub dataset id: "name" or "org/name"
_HUB_DATASET_RE = re.compile(r'^(?:[A-Za-z0-9][A-Za-z0-9_\-.]*/)?[A-Za-z0-9][A-Za-z0-9_\-.]*$')
_TAGS = ['image-classification', 'multi-label', 'multi-label-image-classification', 'timm', 'srdl']


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def normalise_metrics(
        metrics: Union[None, PathLike, Mapping[str, Any]],
        protocol: Optional[Mapping[str, Any]] = None,
) -> Tuple[Dict[str, float], Dict[str, Any], Optional[List[str]]]:
    """(metric values, protocol, label names) of an srdl-validate report, a plain dict or a JSON file's path;
    :class:`InputError` for an unreadable report or metrics without their protocol."""
    import json

    source = 'metrics'
    if metrics is None:
        report: Dict[str, Any] = {}
    elif isinstance(metrics, (str, os.PathLike)):
        source = os.fspath(metrics)
        try:
            with open(metrics, 'r', encoding='utf-8-sig') as f:
                report = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f'metrics file {source} is not valid JSON ({e}): pass srdl-validate --output\'s report')
        if not isinstance(report, dict):
            raise InputError(f'metrics file {source} must hold a JSON object (an srdl-validate --output report)')
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
    proto = {k: proto[k] for k in PROTOCOL_KEYS if proto.get(k) is not None}
    if values:
        missing = [' or '.join(keys) for keys in REQUIRED_PROTOCOL if not any(proto.get(k) for k in keys)]
        if missing:
            raise InputError(
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


def ordered_metrics(values: Mapping[str, float]) -> List[Tuple[str, float]]:
    """Metrics in card order: the paper's (METRIC_NAMES) first, then the rest alphabetically."""
    known = [(k, values[k]) for k in METRIC_NAMES if k in values]
    rest = sorted((k, v) for k, v in values.items() if k not in METRIC_NAMES)
    return known + rest


def usage_snippet(source: str) -> str:
    """Python that loads the published model from ``source`` (``hf-hub:org/repo`` or ``local-dir:PATH``) and
    prints the classes scored at or above their decision thresholds (the weights' per-class ones, else 0.5) for
    ``image.jpg``; it runs as written (with the label names, or the class indices when the weights have none)."""
    return '\n'.join([
        'import timm, torch',
        'import srdl_timm  # registers the srdl_* architectures; needed before timm reads config.json',
        'from PIL import Image',
        '',
        f'model = timm.create_model({source!r}, pretrained=True).eval()',
        'config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**config, is_training=False)',
        "image = Image.open('image.jpg').convert('RGB')  # your image",
        'with torch.inference_mode():',
        '    probs = model(transform(image).unsqueeze(0)).sigmoid()[0]  # multi-label: one sigmoid per class',
        "labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]",
        'thresholds = srdl_timm.labels.model_label_thresholds(model)  # per-class decision thresholds, or None',
        'cut = thresholds.values if thresholds else [0.5] * model.num_classes',
        'print([(labels[i], round(p.item(), 3)) for i, p in enumerate(probs) if p >= cut[i]])',
    ])


def _thresholds_section(config: Mapping[str, Any]) -> List[str]:
    """The card's "Decision thresholds" section: the per-class thresholds config.json records, or 0.5."""
    thresholds = LabelThresholds.from_json(config, 'config.json')
    lines = ['', '## Decision thresholds', '']
    if thresholds is None:
        return lines + ['No per-class thresholds were recorded: a class is predicted present when its probability is '
                        '>= 0.5 (the threshold of the paper\'s CP, CR, CF1, OP, OR, OF1).']
    tuned_on, rule = thresholds.tuned_on or {}, thresholds.info.get('rule', 'given')
    where = (f'on {tuned_on.get("data")} split `{tuned_on.get("split")}` ({tuned_on.get("num_images")} images)'
             if tuned_on else 'on a split that was not recorded')
    lines += [f'A class is predicted present when its probability is >= its own threshold (config.json '
              f'`label_thresholds`, in output order). They were chosen {where}: '
              f'{thresholds.info.get("description") or TUNING_RULES.get(rule, rule)}. They are not from '
              'the paper (whose CP, CR, CF1, OP, OR, OF1 use 0.5), and metrics at them are only meaningful on '
              'images other than those they were tuned on (`srdl-validate --thresholds from-weights` refuses the '
              'same split). `srdl-predict` uses them by default (`--threshold X` applies one value to every class '
              'instead).', '']
    names = config.get('label_names') or [str(i) for i in range(len(thresholds))]
    untuned = {str(n) for n in thresholds.info.get('untuned') or ()}
    lines += ['| class | threshold |', '|---|---|']
    lines += [f'| {n} | {v:.4f}{" (no positive to tune on: 0.5)" if str(n) in untuned else ""} |'
              for n, v in zip(names, thresholds.values)]
    return lines


def _graph_kind(margs: Mapping[str, Any]) -> str:
    if margs.get('graph_kind') == 'knn':
        return f'kNN (C x {margs.get("graph_neighbors")}, not the paper\'s dense C x C)'
    return 'dense C x C (the paper\'s)'


def _labels_line(config: Mapping[str, Any]) -> str:
    names = config.get('label_names') or []
    count = config.get('num_classes')
    if not names:
        return (f'{count}; **no label names were recorded with these weights**: output `i` is the `i`-th class of '
                'the training data, in its order (publish with `--label-names FILE` or an srdl-validate report to '
                'record them)')
    shown = ', '.join(f'`{n}`' for n in names[:20]) + (f', ... ({len(names)} in all)' if len(names) > 20 else '')
    return f'{count}, in output order: {shown} (config.json `label_names`)'


def model_card(
        config: Mapping[str, Any],
        *,
        repo_id: Optional[str] = None,
        local_dir: Optional[PathLike] = None,
        metrics: Optional[Mapping[str, float]] = None,
        protocol: Optional[Mapping[str, Any]] = None,
        dataset: Optional[str] = None,
        hub_dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        sha256: Optional[str] = None,
        num_params: Optional[int] = None,
        description: Optional[str] = None,
) -> str:
    """README.md text for a published SRDL folder: Hub metadata in YAML front matter, then the card.

    Args:
        config: the config.json written beside it.
        repo_id, local_dir: where the usage snippet loads from (``hf-hub:`` / ``local-dir:``).
        metrics, protocol: metric values (percent) and how they were measured.
        dataset, hub_dataset: the dataset's name and Hub id (only the id goes into the metadata).
        license, recipe, sha256, num_params, description: stated in the card.
    """
    metrics = dict(metrics or {})
    protocol = dict(protocol or {})
    arch = config['architecture']
    pcfg = config.get('pretrained_cfg', {})
    name = repo_id.split('/')[-1] if repo_id else arch
    dataset = dataset or protocol.get('dataset') or hub_dataset
    license = license or pcfg.get('license') or 'apache-2.0'
    if hub_dataset is not None and not _HUB_DATASET_RE.match(hub_dataset):
        raise InputError(f'--hub-dataset {hub_dataset!r} is not a Hugging Face Hub dataset id ("org/name")')
    lines = ['---', _front_matter(name, license, metrics, protocol, dataset, hub_dataset), '---',
             f'# Model card for {name}', '',
             'SRDL (Semantic Representation and Dependency Learning) multi-label image classifier: a timm CNN '
             'backbone followed by the category-aware region head (label graph over label-name word vectors, '
             'channel and spatial category attention, per-category classifier). Object erasing (OE) is a '
             'training-time regulariser only; inference is a single forward pass returning one logit per class '
             '(apply a sigmoid for per-class probabilities; they do not sum to 1).']
    if description:
        lines += ['', description]
    details = _details(config, dataset, hub_dataset, sha256, recipe, num_params)
    lines += ['', '## Model Details'] + [f'- **{k}:** {v}' for k, v in details]
    source = f'hf-hub:{repo_id}' if repo_id else f'local-dir:{os.path.abspath(os.fspath(local_dir or "."))}'
    lines += ['', '## Model Usage', '', '```python', usage_snippet(source), '```',
              '', 'Fine-tune on other categories with `num_classes=N` (the classifier and the label-graph nodes '
              'are re-initialised; pass `label_embeddings=` for the new names), or start from ImageNet with '
              '`pretrained_backbone=True` instead of these weights.']
    lines += _thresholds_section(config) + _evaluation_section(metrics, protocol)
    lines += ['', '## Citation', '', '```bibtex', CITATION, '```']
    return '\n'.join(lines) + '\n'


def _front_matter(name: str, license: str, metrics: Dict[str, float], protocol: Dict[str, Any],
                  dataset: Optional[str], hub_dataset: Optional[str]) -> str:
    """The Hub metadata (YAML), with a model-index when metrics and a Hub dataset are given."""
    from huggingface_hub import EvalResult, ModelCardData
    eval_results = None
    if metrics and hub_dataset:
        eval_results = [
            EvalResult(
                task_type='image-classification', task_name='Multi-label image classification',
                dataset_type=hub_dataset, dataset_name=str(dataset),
                dataset_split=str(protocol['split']) if protocol.get('split') else None,
                metric_type=key, metric_value=round(float(value), 4), metric_name=METRIC_NAMES.get(key, key))
            for key, value in ordered_metrics(metrics)]
    return ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification', tags=list(_TAGS),
        datasets=[hub_dataset] if hub_dataset else None, model_name=name, eval_results=eval_results).to_yaml()


def _details(config: Mapping[str, Any], dataset: Optional[str], hub_dataset: Optional[str], sha256: Optional[str],
             recipe: Optional[str], num_params: Optional[int]) -> List[Tuple[str, str]]:
    """The card's "Model Details" entries."""
    arch, pcfg, margs = config['architecture'], config.get('pretrained_cfg', {}), config.get('model_args', {})
    size = pcfg.get('input_size')
    details = [
        ('Model type', 'multi-label image classification (independent sigmoid per class)'),
        ('Architecture', f'`{arch}`: backbone `{margs.get("backbone")}`, node width {margs.get("embed_dim")}, '
                         f'{margs.get("graph_layers")} graph layer(s), label graph V {_graph_kind(margs)}, '
                         f'use_gcn={margs.get("use_gcn")}, '
                         f'use_ca={margs.get("use_ca")}, use_sa={margs.get("use_sa")}, '
                         f'OE top-K {margs.get("oe_topk")}, alpha {margs.get("oe_alpha")}, '
                         f'attention {margs.get("attention", "paper")!r}, OE erases {margs.get("oe_erase", "attention")!r}'
                         + ('' if margs.get('attention', 'paper') == 'paper' and margs.get('oe_erase', 'attention')
                            == 'attention' else " (not the paper's: see MODEL_CARD.md, 'Attention variants')")),
        ('Classes', _labels_line(config)),
    ]
    if num_params is not None:
        details.append(('Parameters (M)', f'{num_params / 1e6:.2f}'))
    if size:
        details.append(('Input', f'{size[1]} x {size[2]}, {pcfg.get("interpolation")} resize, crop_pct '
                                 f'{pcfg.get("crop_pct")} (crop_mode {pcfg.get("crop_mode")}), mean '
                                 f'{_fmt(tuple(pcfg.get("mean", ())))}, std {_fmt(tuple(pcfg.get("std", ())))}'))
    if dataset:
        details.append(('Dataset', str(dataset) + (f' (Hub dataset `{hub_dataset}`)' if hub_dataset else '')))
    details.append(('Paper', f'{PAPER_TITLE} ({", ".join(PAPER_AUTHORS)}); preprint, see Citation'))
    details.append(('Library', 'timm + srdl-timm (`import srdl_timm` registers the SRDL architectures)'))
    if sha256:
        details.append(('Weights', f'`model.safetensors`, sha256 `{sha256}`'))
    if recipe:
        details.append(('Training recipe', f'`{recipe}`'))
    return details


def _evaluation_section(metrics: Dict[str, float], protocol: Dict[str, Any]) -> List[str]:
    """The card's "Evaluation" section: the metrics table and how they were measured."""
    if not metrics:
        return ['', '## Evaluation', '', 'No evaluation was published with these weights.']
    units = protocol.get('units', 'percent')
    lines = ['', '## Evaluation', '', f'| metric | value ({units}) |', '|---|---|']
    lines += [f'| {METRIC_NAMES.get(k, k)} | {v:.2f} |' for k, v in ordered_metrics(metrics)]
    lines += ['', '### Protocol', '']
    for key in PROTOCOL_KEYS:
        if key not in protocol:
            continue
        value = protocol[key]
        if isinstance(value, Mapping):
            lines.append(f'- **{key}:**')
            lines += [f'  - {k}: {v}' for k, v in value.items()]
        else:
            lines.append(f'- **{key}:** {_fmt(value) if isinstance(value, (list, tuple)) else value}')
    return lines
