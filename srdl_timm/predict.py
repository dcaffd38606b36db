"""``srdl-predict``: multi-label predictions (and Figure-5 attention overlays) for image files.

Inputs are image files, folders (``--recursive`` to descend) and glob patterns (quote them; ``**`` with
``--recursive``). Files named explicitly or matched by a glob are always tried; inside folders only files with an
image extension (:data:`IMAGE_EXTENSIONS`) are taken, other files are skipped (counted in the log). Each image
gets the labels whose sigmoid score is >= ``--threshold`` and/or the ``--topk`` best ones:

* only ``--threshold T``: every label with score >= T;
* only ``--topk K``: the K best labels, whatever their score;
* both: the K best among those with score >= T;
* neither: ``--threshold 0.5``.

Output is a table (default), ``--format json`` or ``--format csv``, on stdout or in ``--output FILE``. Bad
inputs (missing paths, unreadable files, non-image or corrupt files, folders without images, globs that match
nothing) are reported per input, in the output too, while the rest are processed. Exit status: 0 when every input
was predicted, 1 when any input failed, 2 for a usage or model-loading error.

The model is a timm name (with ``--checkpoint FILE.safetensors``, loaded through
``pretrained_cfg_overlay=dict(file=...)`` and checked to hold exactly the model's tensors), an ``hf-hub:org/repo``
or a ``local-dir:PATH`` name. Label names come from ``--label-names FILE``, else the model
(``model.label_names``, ``pretrained_cfg['label_names']``), else the checkpoint's safetensors metadata key
``label_names`` (a JSON list) or the top-level ``label_names`` of a ``config.json`` / ``train_config.json`` /
``args.json`` beside it, else ``class_0 …`` with a warning.

Examples::

    srdl-predict photos/ --recursive --model hf-hub:org/srdl_resnet101.coco --topk 3
    srdl-predict 'shots/*.jpg' --model srdl_resnet101 --checkpoint coco.safetensors --threshold 0.6 \\
        --format json --output preds.json --batch-size 64 --amp
    srdl-predict street.jpg --model local-dir:./srdl_voc --explain overlays/ --explain-erase
"""
import argparse
import csv
import dataclasses
import glob
import io
import json
import logging
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from .utils import parse_model_kwargs

__all__ = [
    'IMAGE_EXTENSIONS', 'InputItem', 'Prediction', 'collect_inputs', 'load_model', 'resolve_label_names',
    'select_labels', 'predict_files', 'checkpoint_label_names', 'format_table', 'format_json', 'format_csv',
    'CSV_COLUMNS', 'SIDECAR_CONFIGS', 'build_parser', 'main',
]

_logger = logging.getLogger('srdl_timm.predict')

#: extensions taken from folders (case-insensitive); explicit files and glob matches are tried whatever they are
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm')

_GLOB_CHARS = set('*?[')


@dataclasses.dataclass
class InputItem:
    """One input to predict: an image path, or an input spec that failed before any image was read."""
    path: str
    error: Optional[str] = None


@dataclasses.dataclass
class Prediction:
    """The result for one input.

    Attributes:
        path: the image path (or the input spec that failed).
        labels: ``(label, class index, score)`` in decreasing score order.
        error: why the input failed, or None.
        size: ``(width, height)`` of the image.
        explanations: PNG files written for it by ``--explain``.
    """
    path: str
    labels: List[Tuple[str, int, float]] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    size: Optional[Tuple[int, int]] = None
    explanations: List[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the image was read and predicted."""
        return self.error is None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready record: path, ok, labels (label / index / score), error, size, explanations."""
        return dict(
            path=self.path,
            ok=self.ok,
            labels=[dict(label=name, index=int(index), score=round(float(score), 6))
                    for name, index, score in self.labels],
            error=self.error,
            size=None if self.size is None else list(self.size),
            explanations=list(self.explanations),
        )


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------
def _is_image_name(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(extensions)) and not os.path.basename(name).startswith('.')


def _folder_files(folder: str, recursive: bool, extensions: Sequence[str]) -> Tuple[List[str], int, List[str]]:
    """Image files of a folder (sorted), the number of other files skipped, and errors of unreadable sub-folders."""
    images: List[str] = []
    skipped = 0
    errors: List[str] = []
    if recursive:
        def onerror(e: OSError) -> None:
            errors.append(f'{e.filename}: cannot read folder ({e.strerror or e})')
        for root, dirs, files in os.walk(folder, onerror=onerror):
            dirs.sort()
            dirs[:] = [d for d in dirs if not d.startswith('.')]
            for name in sorted(files):
                if _is_image_name(name, extensions):
                    images.append(os.path.join(root, name))
                elif not name.startswith('.'):
                    skipped += 1
        return images, skipped, errors
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_file() and not entry.name.startswith('.'):
            if _is_image_name(entry.name, extensions):
                images.append(entry.path)
            else:
                skipped += 1
    return images, skipped, errors


def collect_inputs(
        inputs: Iterable[str], recursive: bool = False, extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> List[InputItem]:
    """Expand files, folders and glob patterns into a list of images to predict, keeping failures as items.

    * an existing file: taken as is (it is reported later if it is not a readable image);
    * a folder: its files with an image extension, sorted (sub-folders too with ``recursive``); a folder with
      no image file is one failed item;
    * a pattern with ``*``, ``?`` or ``[``: its matches, sorted (``**`` spans folders with ``recursive``); a
      pattern matching no file is one failed item; folders it matches are expanded as above;
    * anything else (missing path, unreadable folder, broken link): one failed item.

    Duplicates (the same file reached twice) are kept once, at their first position.
    """
    items: List[InputItem] = []
    seen = set()

    def add(path: str) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            items.append(InputItem(path))

    def add_folder(folder: str) -> None:
        try:
            files, skipped, errors = _folder_files(folder, recursive, extensions)
        except OSError as e:
            items.append(InputItem(folder, f'cannot read folder: {e.strerror or e}'))
            return
        items.extend(InputItem(folder, err) for err in errors)
        if skipped:
            _logger.info('%s: skipped %d files without an image extension', folder, skipped)
        if not files:
            where = ' or its sub-folders' if recursive else ''
            extra = f' ({skipped} files without an image extension skipped)' if skipped else ''
            items.append(InputItem(folder, f'no image files in this folder{where}{extra}'))
            return
        for path in files:
            add(path)

    for spec in inputs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            add_folder(spec)
        elif os.path.isfile(spec):
            add(spec)
        elif _GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(spec, recursive=recursive))
            if not matches:
                items.append(InputItem(spec, 'no files match this pattern'))
            for match in matches:
                if os.path.isdir(match):
                    add_folder(match)
                else:
                    add(match)
        elif os.path.islink(spec):
            items.append(InputItem(spec, 'broken symbolic link (its target does not exist)'))
        elif os.path.exists(spec):
            items.append(InputItem(spec, 'not a regular file or folder'))
        else:
            items.append(InputItem(spec, 'no such file or folder'))
    return items


class _ImageFiles(Dataset):
    """Reads and transforms one image per index, returning the error instead of raising it."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor], keep_image: bool):
        self.paths = list(paths)
        self.transform = transform
        self.keep_image = keep_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from .data.images import open_image
        path = self.paths[index]
        item: Dict[str, Any] = dict(index=index, tensor=None, size=None, image=None, error=None)
        if not os.access(path, os.R_OK):
            item['error'] = 'permission denied: the file is not readable'
            return item
        try:
            image = open_image(path)
            item['tensor'] = self.transform(image)
            item['size'] = image.size
            if self.keep_image:
                item['image'] = image
        except Exception as e:  # any unreadable input is reported per file, never fatal for the others
            message = str(e) or type(e).__name__
            # open_image's messages start with the path, which the report already shows
            item['error'] = message[len(path) + 2:] if message.startswith(path + ': ') else message
        return item


def _collate(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return items


# ----------------------------------------------------------------------------------------------------------
# model and labels
# ----------------------------------------------------------------------------------------------------------
def _classifier_key(model_name: str) -> Optional[str]:
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(model_name, allow_unregistered=True)
    classifier = getattr(cfg, 'classifier', None) if cfg is not None else None
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0] if classifier else None
    return f'{classifier}.weight' if classifier else None


def _checkpoint_shape(checkpoint: str, key: str) -> Optional[Tuple[int, ...]]:
    from safetensors import safe_open
    with safe_open(checkpoint, framework='pt') as f:
        return tuple(f.get_slice(key).get_shape()) if key in f.keys() else None


def _checkpoint_num_classes(model_name: str, checkpoint: str) -> Optional[int]:
    from safetensors import safe_open
    key = _classifier_key(model_name)
    with safe_open(checkpoint, framework='pt') as f:
        if key and key in f.keys():
            return int(f.get_slice(key).get_shape()[0])
    return None


#: JSON files beside a checkpoint that may hold its ``label_names`` (timm Hub config, training configs)
SIDECAR_CONFIGS = ('config.json', 'train_config.json', 'args.json')


def checkpoint_label_names(checkpoint: str) -> Optional[List[str]]:
    """Label names recorded with a checkpoint, or None.

    Looked up in the safetensors metadata key ``label_names`` (a JSON list), then in the top-level
    ``label_names`` of a JSON file beside it (:data:`SIDECAR_CONFIGS`).
    """
    from safetensors import safe_open
    with safe_open(checkpoint, framework='pt') as f:
        metadata = f.metadata() or {}
    raw = metadata.get('label_names')
    if not raw:
        folder = os.path.dirname(os.path.abspath(checkpoint))
        for name in SIDECAR_CONFIGS:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding='utf-8') as fh:
                    config = json.load(fh)
            except (OSError, ValueError) as e:
                _logger.warning('cannot read %s: %s', path, e)
                continue
            names = config.get('label_names') if isinstance(config, dict) else None
            if isinstance(names, list) and names:
                _logger.info('label names from %s', path)
                return [str(n) for n in names]
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        _logger.warning('%s: metadata label_names is not a JSON list; ignored', checkpoint)
        return None
    if not isinstance(names, list):
        _logger.warning('%s: metadata label_names is not a JSON list; ignored', checkpoint)
        return None
    return [str(n) for n in names]


def _verify_checkpoint_loaded(model: nn.Module, checkpoint: str) -> None:
    """Raise unless ``checkpoint`` holds exactly the model's tensors with the model's shapes.

    timm loads SRDL weights non-strictly (the filter drops class-dependent tensors of another shape), so a
    checkpoint for another configuration would otherwise leave parts of the model randomly initialised.
    """
    from safetensors import safe_open
    with safe_open(checkpoint, framework='pt') as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing, mismatched = [], []
    state = model.state_dict()
    for key, value in state.items():
        if key not in shapes:
            missing.append(key)
        elif shapes[key] != tuple(value.shape):
            mismatched.append(f'{key} {shapes[key]} vs model {tuple(value.shape)}')
    unexpected = [key for key in shapes if key not in state]
    if missing or mismatched or unexpected:
        detail = []
        if missing:
            detail.append(f'{len(missing)} tensors missing (e.g. {", ".join(missing[:3])})')
        if unexpected:
            detail.append(f'{len(unexpected)} tensors the model does not have (e.g. {", ".join(unexpected[:3])})')
        if mismatched:
            detail.append(f'{len(mismatched)} with another shape (e.g. {"; ".join(mismatched[:3])})')
        raise ValueError(f'checkpoint {checkpoint} does not match model: {", ".join(detail)}; pass the --model the '
                         'weights were trained with (and --num-classes / --model-kwargs if they differ)')


def load_model(
        model_name: str,
        checkpoint: Optional[str] = None,
        num_classes: Optional[int] = None,
        random_init: bool = False,
        **model_kwargs: Any,
) -> nn.Module:
    """Create a timm model with trained weights, in eval mode, on the CPU.

    Args:
        model_name: a timm model name (``import srdl_timm`` registers ``srdl_*``), ``hf-hub:org/repo`` or
            ``local-dir:PATH`` (a folder with ``config.json`` + ``model.safetensors``).
        checkpoint: a local ``.safetensors`` file for ``model_name`` (loaded with
            ``pretrained_cfg_overlay=dict(file=...)``); the number of classes is read from it unless given.
            It must hold every tensor of the model.
        num_classes: classifier size (default: the checkpoint's, or the pretrained config's).
        random_init: for smoke tests only: no weights at all (logged as a warning).
        model_kwargs: extra ``timm.create_model`` arguments.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: not a safetensors file, weights that do not fit the model, or a plain model name without
            pretrained weights.
    """
    import timm
    from timm.models import get_pretrained_cfg

    import srdl_timm  # noqa: F401  (registers srdl_* with timm)

    if not model_name.startswith(('hf-hub:', 'local-dir:')):
        from timm.models import split_model_name_tag
        if not timm.is_model(split_model_name_tag(model_name)[0]):
            raise ValueError(f'unknown model {model_name!r}: not a registered timm model name (see timm.list_models(); '
                             'srdl_* names are registered by srdl_timm)')
    if num_classes is not None:
        model_kwargs['num_classes'] = num_classes
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
        if not checkpoint.endswith('.safetensors'):
            raise ValueError(f'checkpoint must be a .safetensors file (weights are only loaded as safetensors): '
                             f'{checkpoint}')
        if num_classes is None:
            found = _checkpoint_num_classes(model_name, checkpoint)
            if found is not None:
                model_kwargs['num_classes'] = found
        nodes_shape = _checkpoint_shape(checkpoint, 'label_graph.node_features')
        if (nodes_shape is not None and 'label_embeddings' not in model_kwargs
                and nodes_shape[0] == model_kwargs.get('num_classes')):
            # SRDL layout: the label-graph nodes come from the checkpoint, so build them as placeholders of the
            # checkpoint's shape instead of letting SRDL draw (and warn about) random ones that get overwritten
            model_kwargs['label_embeddings'] = np.zeros(nodes_shape, dtype=np.float32)
        overlay = dict(file=os.path.abspath(checkpoint))
        if 'num_classes' in model_kwargs:
            overlay['num_classes'] = model_kwargs['num_classes']
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
        _verify_checkpoint_loaded(model, checkpoint)
    elif random_init:
        _logger.warning('%s: randomly initialised weights (--random-init): predictions are meaningless', model_name)
        model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    else:
        if not model_name.startswith(('hf-hub:', 'local-dir:')):
            cfg = get_pretrained_cfg(model_name, allow_unregistered=True)
            if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file or cfg.state_dict):
                raise ValueError(f'{model_name!r} has no pretrained weights: pass --checkpoint FILE.safetensors, an '
                                 'hf-hub:org/repo or local-dir:PATH model, or --random-init for a smoke test')
        model = timm.create_model(model_name, pretrained=True, **model_kwargs)
        cfg_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
        if cfg_classes is not None and cfg_classes != getattr(model, 'num_classes', cfg_classes):
            raise ValueError(f'--num-classes {model.num_classes} differs from the pretrained weights\' {cfg_classes} '
                             'classes: the classifier would be randomly initialised')
    return model.eval()


def _read_label_file(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        text = f.read()
    if path.endswith('.json'):
        names = json.loads(text)
        if isinstance(names, dict):
            names = names.get('label_names', names.get('labels'))
        if not isinstance(names, list):
            raise ValueError(f'{path}: expected a JSON list of names (or an object with "label_names")')
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_label_names(
        model: nn.Module,
        num_classes: int,
        label_file: Optional[str] = None,
        checkpoint: Optional[str] = None,
) -> List[str]:
    """Category names for the model's outputs.

    Order: ``label_file`` (one name a line, or a JSON list; must match ``num_classes``), the model's own
    (:func:`srdl_timm.explain.model_label_names`), the checkpoint's (:func:`checkpoint_label_names`), and
    finally ``class_0 … class_{C-1}`` with a warning.
    """
    from .explain import model_label_names
    if label_file:
        names = _read_label_file(label_file)
        if len(names) != num_classes:
            raise ValueError(f'{label_file} holds {len(names)} label names but the model has {num_classes} outputs')
        return names
    names = model_label_names(model, num_classes)
    if names:
        return names
    if checkpoint:
        names = checkpoint_label_names(checkpoint)
        if names and len(names) == num_classes:
            return names
        if names:
            _logger.warning('ignoring %s metadata label_names: %d names for %d outputs', checkpoint, len(names),
                            num_classes)
    _logger.warning('the model carries no label names: using class_0 … class_%d (pass --label-names FILE)',
                    num_classes - 1)
    return [f'class_{i}' for i in range(num_classes)]


def select_labels(
        scores: np.ndarray, label_names: Sequence[str], threshold: Optional[float] = None, topk: Optional[int] = None,
) -> List[Tuple[str, int, float]]:
    """Labels of one image by score: all >= ``threshold``, the ``topk`` best, or the ``topk`` best >= ``threshold``.

    With neither given the threshold is 0.5. Ties keep the lower class index first. Returns
    ``(label, index, score)`` in decreasing score order.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold is None and topk is None:
        threshold = 0.5
    order = np.argsort(-scores, kind='stable')
    if threshold is not None:
        order = order[scores[order] >= threshold]
    if topk is not None:
        order = order[:topk]
    return [(str(label_names[i]), int(i), float(scores[i])) for i in order]


# ----------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------
def _forward_scores(model: nn.Module, batch: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Sigmoid scores ``[B, C]`` in float32; with AMP the backbone runs under autocast and the head in float32."""
    if amp_dtype is None:
        logits = model(batch)
    elif hasattr(model, 'forward_features') and hasattr(model, 'forward_head'):
        with torch.autocast(device_type=batch.device.type, dtype=amp_dtype):
            features = model.forward_features(batch)
        with torch.autocast(device_type=batch.device.type, enabled=False):
            logits = model.forward_head(features.float())
    else:
        with torch.autocast(device_type=batch.device.type, dtype=amp_dtype):
            logits = model(batch)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise TypeError('the model must return logits [B, C] in eval mode')
    return torch.sigmoid(logits.float())


def _unique_stem(path: str, used: set) -> str:
    base = os.path.splitext(os.path.basename(path))[0] or 'image'
    stem, n = base, 1
    while stem in used:
        n += 1
        stem = f'{base}-{n}'
    used.add(stem)
    return stem


def predict_files(
        model: nn.Module,
        items: Sequence[InputItem],
        label_names: Sequence[str],
        transform: Optional[Callable[[Image.Image], torch.Tensor]] = None,
        threshold: Optional[float] = None,
        topk: Optional[int] = None,
        batch_size: int = 16,
        device: Optional[torch.device] = None,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        workers: int = 0,
        explain_dir: Optional[str] = None,
        explain_topk: int = 3,
        explain_erase: bool = False,
        erase_alpha: Optional[float] = None,
        progress: bool = False,
) -> List[Prediction]:
    """Predict labels for every input, one :class:`Prediction` per item, in input order.

    Args:
        model: timm model returning logits ``[B, C]``; moved to ``device`` and put in eval mode.
        items: from :func:`collect_inputs`; items that already failed are passed through.
        label_names: one name per output.
        transform: PIL -> normalised tensor (default: the project's eval transform for the model).
        threshold / topk: label selection (:func:`select_labels`).
        batch_size: images per forward pass.
        device: where the model runs (default: the model's device).
        amp_dtype: autocast dtype for the backbone, or None for float32.
        channels_last: run in channels-last memory format.
        workers: DataLoader processes decoding images (0 = in this process).
        explain_dir: write the attention overlays of :func:`srdl_timm.explain.save_explanation` here (SRDL only).
        explain_topk: categories per overlay set (Figure 5: 3).
        explain_erase: outline the rectangle OE would erase.
        erase_alpha: OE threshold (default: the model's).
        progress: show a tqdm bar.
    """
    from .explain import default_eval_transform, explain_batch, save_explanation
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if device is None:
        device = next(model.parameters()).device
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if transform is None:
        transform = default_eval_transform(model)
    num_classes = getattr(model, 'num_classes', len(label_names))
    if len(label_names) != num_classes:
        raise ValueError(f'{len(label_names)} label names for a model with {num_classes} outputs')
    results: List[Prediction] = [Prediction(item.path, error=item.error) for item in items]
    todo = [i for i, item in enumerate(items) if item.error is None]
    dataset = _ImageFiles([items[i].path for i in todo], transform, keep_image=explain_dir is not None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    used_stems: set = set()
    if progress:
        from tqdm import tqdm
        batches: Iterable = tqdm(loader, desc='predict', dynamic_ncols=True, file=sys.stderr)
    else:
        batches = loader
    with torch.inference_mode():
        for batch_items in batches:
            good = [it for it in batch_items if it['error'] is None]
            for it in batch_items:
                if it['error'] is not None:
                    result = results[todo[it['index']]]
                    result.error = it['error']
                    _logger.warning('%s: %s', result.path, it['error'])
            if not good:
                continue
            batch = torch.stack([it['tensor'] for it in good]).to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            explained: Optional[List[Dict[str, Any]]] = None
            if explain_dir is not None:
                explained = explain_batch(model, batch, [it['size'] for it in good], explain_topk, label_names,
                                          erase=explain_erase, erase_alpha=erase_alpha, amp_dtype=amp_dtype,
                                          upsample=False)
                scores = np.stack([e['probabilities'] for e in explained])
            else:
                scores = _forward_scores(model, batch, amp_dtype).cpu().numpy()
            if scores.shape[1] != len(label_names):
                raise ValueError(f'the model returned {scores.shape[1]} scores per image for {len(label_names)} '
                                 'label names')
            for j, it in enumerate(good):
                result = results[todo[it['index']]]
                result.labels = select_labels(scores[j], label_names, threshold, topk)
                result.size = tuple(it['size'])
                if explained is not None:
                    assert explain_dir is not None
                    stem = _unique_stem(result.path, used_stems)
                    result.explanations = save_explanation(it['image'], explained[j], explain_dir, stem,
                                                           erase=explain_erase)
    return results


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------
def format_table(predictions: Sequence[Prediction], decimals: int = 3) -> str:
    """Plain-text table: one row per input, ``label score`` pairs or ``ERROR: …``; a summary line at the end."""
    width = max([len('image')] + [len(p.path) for p in predictions])
    lines = [f'{"image":<{width}}  labels']
    for p in predictions:
        if p.ok:
            cell = ', '.join(f'{name} {score:.{decimals}f}' for name, _, score in p.labels) or '(none)'
        else:
            cell = f'ERROR: {p.error}'
        lines.append(f'{p.path:<{width}}  {cell}')
    failed = sum(not p.ok for p in predictions)
    lines.append(f'{len(predictions) - failed} predicted, {failed} failed')
    return '\n'.join(lines) + '\n'


def format_json(predictions: Sequence[Prediction], meta: Optional[Dict[str, Any]] = None) -> str:
    """JSON document: ``meta`` fields, ``num_inputs``, ``num_failed`` and ``results`` (see ``Prediction.to_dict``)."""
    doc: Dict[str, Any] = dict(meta or {})
    doc['num_inputs'] = len(predictions)
    doc['num_failed'] = sum(not p.ok for p in predictions)
    doc['results'] = [p.to_dict() for p in predictions]
    return json.dumps(doc, indent=2, allow_nan=False) + '\n'


#: columns of ``--format csv``
CSV_COLUMNS = ('path', 'ok', 'rank', 'label', 'index', 'score', 'error')


def format_csv(predictions: Sequence[Prediction]) -> str:
    """CSV with one row per (image, label) (:data:`CSV_COLUMNS`); an image without labels or a failed input has
    one row with empty label columns (and the error)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(CSV_COLUMNS)
    for p in predictions:
        if p.ok and p.labels:
            for rank, (name, index, score) in enumerate(p.labels, start=1):
                writer.writerow([p.path, 1, rank, name, index, f'{score:.6f}', ''])
        else:
            writer.writerow([p.path, int(p.ok), '', '', '', '', p.error or ''])
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------

def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must be in [0, 1], got {text}')
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-predict`` argument parser."""
    p = argparse.ArgumentParser(
        prog='srdl-predict',
        description='Multi-label predictions (and Figure-5 attention overlays) for image files, folders and globs.',
        epilog='Exit status: 0 = every input predicted, 1 = some inputs failed, 2 = usage or model error.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('inputs', nargs='+', help='image files, folders and glob patterns')
    p.add_argument('--recursive', '-r', action='store_true', help='descend into sub-folders; ** in globs')
    g = p.add_argument_group('model')
    g.add_argument('--model', required=True, help='timm model name, hf-hub:org/repo or local-dir:PATH')
    g.add_argument('--checkpoint', default=None, help='local .safetensors weights for --model')
    g.add_argument('--num-classes', type=int, default=None, help='classifier size (None: from the weights)')
    g.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V', help='extra create_model kwargs')
    g.add_argument('--label-names', default=None, metavar='FILE',
                   help='label names, one a line (or a JSON list), overriding the model\'s')
    g.add_argument('--random-init', action='store_true', help='no weights (smoke tests only)')
    g.add_argument('--img-size', type=int, default=None, help='input size (None: the model\'s config)')
    g = p.add_argument_group('labels')
    g.add_argument('--threshold', type=_probability, default=None,
                   help='keep labels with score >= this (None: 0.5, unless --topk is given)')
    g.add_argument('--topk', type=_positive_int, default=None, help='keep the k best labels (>= --threshold if set)')
    g = p.add_argument_group('output')
    g.add_argument('--format', default='table', choices=('table', 'json', 'csv'))
    g.add_argument('--output', '-o', default=None, metavar='FILE', help='write here instead of stdout')
    g.add_argument('--explain', default=None, metavar='DIR',
                   help='write attention overlays (Figure 5) of the top categories per image here (SRDL models)')
    g.add_argument('--explain-topk', type=_positive_int, default=3, help='categories per image in the overlays')
    g.add_argument('--explain-erase', action='store_true', help='outline the rectangle OE would erase')
    g.add_argument('--erase-alpha', type=float, default=None, help='OE threshold alpha (None: the model\'s)')
    g = p.add_argument_group('run')
    g.add_argument('--batch-size', type=_positive_int, default=16)
    g.add_argument('--workers', type=int, default=2, help='image-decoding processes (0 = main process)')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--amp', action='store_true', help='autocast the backbone (head stays float32)')
    g.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--progress', action='store_true', help='progress bar on stderr')
    g.add_argument('--log-level', default='WARNING')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-predict``; returns the exit status (0 ok, 1 some inputs failed, 2 error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format='%(levelname)s %(name)s: %(message)s')
    if args.erase_alpha is not None and not 0.0 < args.erase_alpha < 1.0:
        parser.error(f'--erase-alpha must be in (0, 1), got {args.erase_alpha}')
    if args.workers < 0:
        parser.error('--workers must be >= 0')
    if args.explain_erase and not args.explain:
        parser.error('--explain-erase needs --explain DIR')
    try:
        model = load_model(args.model, args.checkpoint, args.num_classes, args.random_init,
                           **parse_model_kwargs(args.model_kwargs))
        num_classes = getattr(model, 'num_classes', 0)
        if not num_classes:
            raise ValueError(f'{args.model} has no classifier (num_classes=0)')
        label_names = resolve_label_names(model, num_classes, args.label_names, args.checkpoint)
        if args.explain:
            from .explain import _check_attention_model
            _check_attention_model(model)
        from .explain import default_eval_transform
        transform = default_eval_transform(model, args.img_size)
        device = torch.device(args.device)
        amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f'srdl-predict: error: {e}', file=sys.stderr)
        return 2

    items = collect_inputs(args.inputs, recursive=args.recursive)
    for item in items:
        if item.error is not None:
            _logger.warning('%s: %s', item.path, item.error)
    predictions = predict_files(
        model, items, label_names, transform, threshold=args.threshold, topk=args.topk,
        batch_size=args.batch_size, device=device, amp_dtype=amp_dtype, channels_last=args.channels_last,
        workers=args.workers, explain_dir=args.explain, explain_topk=args.explain_topk,
        explain_erase=args.explain_erase, erase_alpha=args.erase_alpha, progress=args.progress)

    if args.format == 'json':
        threshold = 0.5 if args.threshold is None and args.topk is None else args.threshold
        meta = dict(model=args.model, checkpoint=args.checkpoint, threshold=threshold, topk=args.topk,
                    input_size=list(transform.transforms[0].size) if hasattr(transform, 'transforms') else None,
                    amp_dtype=args.amp_dtype if args.amp else None, explain_dir=args.explain)
        text = format_json(predictions, meta)
    elif args.format == 'csv':
        text = format_csv(predictions)
    else:
        text = format_table(predictions)
    failed = sum(not p.ok for p in predictions)
    if args.output:
        out_dir = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(out_dir, exist_ok=True)
        with open(args.output, 'w', encoding='utf-8', newline='') as f:
            f.write(text)
        print(f'wrote {len(predictions)} results ({failed} failed) to {args.output}')
    else:
        sys.stdout.write(text)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
