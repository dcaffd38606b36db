"""Write tiny but real multi-label datasets for tests: JPEGs via PIL, COCO JSON, VOC XML, CSV.

Every writer creates the exact on-disk layout the real data uses and returns what it wrote — including the
label vectors it *intended*, computed from its own random draws and not through any srdl_timm parser — so tests
can compare a loader's output with an independent truth.

    write_coco(root, split='val', num_images=8, ...)        MS-COCO 2014 layout (80 categories, real ids)
    write_coco_json(root, split='train', ...)                root/annotations/{split}.json + root/images/{split}/
    write_voc(root, splits={'trainval': 6, 'test': 5}, ...)  VOCdevkit/VOC2007 layout with difficult objects
    write_csv(root, split='train', ...)                      root/{split}.csv (list or wide layout) + root/images/
    write_image(path, mode=...), write_corrupt_image(path)   single image files (RGB, L, RGBA, CMYK, I;16, ...)

At the end: shared pieces of the srdl-train tests (TRAIN_BASE, write_train_csv, train_config, train_cli_args) and of
the publishing tests (HUB_* constants, toy_srdl_model, perturb, model_out, populate_hub_cache, run_python).
"""
import json
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

import srdl_timm
from srdl_timm.data.label_sets import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_CLASSES

__all__ = ['write_image', 'write_corrupt_image', 'write_coco', 'write_coco_json', 'write_voc', 'write_csv',
           'COCO_2014_CATEGORIES']

#: the 80 COCO categories as (id, name) in id order
COCO_2014_CATEGORIES: List[Tuple[int, str]] = list(zip(COCO_CATEGORY_IDS, COCO_CLASSES))


def write_image(path: Union[str, os.PathLike], size: Tuple[int, int] = (64, 48), mode: str = 'RGB', seed: int = 0,
                fmt: Optional[str] = None) -> str:
    """Write a random-noise image of ``size`` (W, H) in PIL ``mode``; returns the path.

    Modes: 'RGB', 'L', 'P', 'RGBA', 'LA', 'CMYK' (JPEG), 'I;16' (16-bit gray, PNG/TIFF: values span 0..65535),
    '1'. The format follows the extension unless ``fmt`` is given (JPEG cannot hold alpha or 16-bit: use .png).
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == 'I;16':
        arr = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
        img = Image.fromarray(arr)  # mode I;16
    else:
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr, 'RGB')
        if mode == 'P':
            img = img.quantize(16)
        elif mode != 'RGB':
            img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def write_corrupt_image(path: Union[str, os.PathLike], kind: str = 'truncated', seed: int = 0) -> str:
    """Write an unreadable image: ``'truncated'`` (a real JPEG cut in half), ``'garbage'`` (random bytes with a
    .jpg name) or ``'empty'`` (0 bytes); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    if kind == 'truncated':
        write_image(path, size=(96, 96), seed=seed, fmt='JPEG')
        with open(path, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:len(data) // 2])
    elif kind == 'garbage':
        with open(path, 'wb') as f:
            f.write(np.random.default_rng(seed).integers(0, 256, 512, dtype=np.uint8).tobytes())
    elif kind == 'empty':
        open(path, 'wb').close()
    else:
        raise ValueError(f'unknown corrupt kind {kind!r}')
    return path


def _write_coco_format(ann_file: str, image_dir: str, file_names: List[str], categories: Sequence[Tuple[int, str]],
                       seed: int, num_empty: int, crowd: bool, image_size: Tuple[int, int],
                       max_labels: int, class_pool: Optional[Sequence[int]]) -> Dict[str, Any]:
    rng = np.random.default_rng(seed)
    n = len(file_names)
    cat_ids = [c for c, _ in categories]
    id_to_name = dict(categories)
    pool = list(class_pool) if class_pool is not None else cat_ids
    # distinct, unsorted image ids; the JSON lists images in a shuffled (non-id) order
    image_ids = [int(i) for i in rng.choice(np.arange(1, 10 * n + 100), size=n, replace=False)]
    empty = set(rng.choice(n, size=num_empty, replace=False).tolist()) if num_empty else set()
    images, annotations, labels, crowd_only = [], [], {}, []
    ann_id = 1
    for k, (img_id, fname) in enumerate(zip(image_ids, file_names)):
        write_image(os.path.join(image_dir, fname), size=image_size, seed=seed * 1000 + k)
        images.append(dict(id=img_id, file_name=fname, width=image_size[0], height=image_size[1],
                           license=1, coco_url='', date_captured='2013-11-14 16:28:13', flickr_url=''))
        if k in empty:
            continue
        chosen = rng.choice(pool, size=int(rng.integers(1, max_labels + 1)), replace=False)
        labels[fname] = set()
        for j, cid in enumerate(chosen):
            # the first label of every third image is carried only by a crowd annotation
            is_crowd = crowd and j == 0 and k % 3 == 0
            for _ in range(int(rng.integers(1, 3)) if not is_crowd else 1):
                x, y = float(rng.integers(0, image_size[0] // 2)), float(rng.integers(0, image_size[1] // 2))
                bw, bh = float(rng.integers(4, image_size[0] // 2)), float(rng.integers(4, image_size[1] // 2))
                seg = ({'counts': [0, 10, 20], 'size': [image_size[1], image_size[0]]} if is_crowd
                       else [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]])
                annotations.append(dict(id=ann_id, image_id=img_id, category_id=int(cid), bbox=[x, y, bw, bh],
                                        area=bw * bh, iscrowd=int(is_crowd), segmentation=seg))
                ann_id += 1
            labels[fname].add(id_to_name[int(cid)])
            if is_crowd:
                crowd_only.append((fname, id_to_name[int(cid)]))
    order = rng.permutation(n)
    data = dict(info=dict(description='tiny test set', year=2014), licenses=[dict(id=1, name='test', url='')],
                images=[images[i] for i in order], annotations=[annotations[i] for i in
                                                                rng.permutation(len(annotations))],
                categories=[dict(id=c, name=nm, supercategory='thing') for c, nm in categories])
    os.makedirs(os.path.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w', encoding='utf-8') as f:
        json.dump(data, f)
    label_names = [nm for _, nm in sorted(categories)]
    col = {nm: i for i, nm in enumerate(label_names)}
    kept = [images[i]['file_name'] for i in order if images[i]['file_name'] in labels]
    targets = np.zeros((len(kept), len(label_names)), dtype=np.float32)
    for r, fname in enumerate(kept):
        for nm in labels[fname]:
            targets[r, col[nm]] = 1.0
    return dict(ann_file=ann_file, image_dir=image_dir, data=data,
                file_names_in_order=[images[i]['file_name'] for i in order],
                kept_file_names=kept, empty_file_names=[file_names[i] for i in sorted(empty)],
                labels=labels, crowd_only=crowd_only, label_names=label_names, targets=targets)


def write_coco(root: Union[str, os.PathLike], split: str = 'val', num_images: int = 8, seed: int = 0,
               num_empty: int = 1, year: str = '2014', crowd: bool = True, image_size: Tuple[int, int] = (64, 48),
               max_labels: int = 3, class_pool: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Write an MS-COCO layout split: ``root/annotations/instances_{split}{year}.json`` (all 80 categories with
    their real ids) and ``root/{split}{year}/COCO_{split}{year}_%012d.jpg``.

    Args:
        root: dataset root.
        split: 'train' or 'val'.
        num_images: images written (``num_empty`` of them get no annotation).
        seed: RNG seed (images, labels, ids and list orders).
        crowd: the first label of every third image comes only from an ``iscrowd=1`` annotation.
        max_labels: each annotated image gets 1..max_labels distinct categories.
        class_pool: category ids to draw labels from (default: all 80).

    Returns:
        dict with ``ann_file``, ``image_dir``, ``data`` (the JSON), ``kept_file_names`` (annotated images in JSON
        order), ``empty_file_names``, ``labels`` {file_name: set of names}, ``crowd_only`` [(file_name, name)],
        ``label_names`` (id order) and ``targets`` [kept, 80].
    """
    root = os.fspath(root)
    names = [f'COCO_{split}{year}_{i:012d}.jpg' for i in range(1, num_images + 1)]
    return _write_coco_format(os.path.join(root, 'annotations', f'instances_{split}{year}.json'),
                              os.path.join(root, f'{split}{year}'), names, COCO_2014_CATEGORIES, seed, num_empty,
                              crowd, image_size, max_labels, class_pool)


def write_coco_json(root: Union[str, os.PathLike], split: str = 'train', num_images: int = 8,
                    categories: Sequence[Union[str, Tuple[int, str]]] = ('cat', 'dog', 'traffic light', 'zebra'),
                    seed: int = 0, num_empty: int = 0, crowd: bool = False, image_size: Tuple[int, int] = (64, 48),
                    max_labels: int = 2, subdir: str = 'sub') -> Dict[str, Any]:
    """Write a user COCO-format split: ``root/annotations/{split}.json`` + ``root/images/{split}/{subdir}/*.jpg``.

    ``categories`` are names (given ids 3, 7, 11, … — listed in reverse id order in the file, so id order must be
    restored by the reader) or ``(id, name)`` pairs. Returns the same dict as :func:`write_coco`.
    """
    root = os.fspath(root)
    cats = [c if isinstance(c, tuple) else (3 + 4 * i, c) for i, c in enumerate(categories)]
    names = [f'{subdir}/{split}_{i:04d}.jpg' if subdir else f'{split}_{i:04d}.jpg' for i in range(num_images)]
    return _write_coco_format(os.path.join(root, 'annotations', f'{split}.json'), os.path.join(root, 'images', split),
                              names, cats[::-1], seed, num_empty, crowd, image_size, max_labels, None)


def _voc_xml(image_id: str, objects: List[Tuple[str, int]], size: Tuple[int, int], rng) -> ET.ElementTree:
    ann = ET.Element('annotation')
    ET.SubElement(ann, 'folder').text = 'VOC2007'
    ET.SubElement(ann, 'filename').text = f'{image_id}.jpg'
    src = ET.SubElement(ann, 'source')
    ET.SubElement(src, 'database').text = 'The VOC2007 Database'
    sz = ET.SubElement(ann, 'size')
    for tag, v in zip(('width', 'height', 'depth'), (size[0], size[1], 3)):
        ET.SubElement(sz, tag).text = str(v)
    ET.SubElement(ann, 'segmented').text = '0'
    for name, difficult in objects:
        obj = ET.SubElement(ann, 'object')
        ET.SubElement(obj, 'name').text = name
        ET.SubElement(obj, 'pose').text = 'Unspecified'
        ET.SubElement(obj, 'truncated').text = '0'
        ET.SubElement(obj, 'difficult').text = str(difficult)
        bb = ET.SubElement(obj, 'bndbox')
        x1, y1 = int(rng.integers(1, size[0] // 2)), int(rng.integers(1, size[1] // 2))
        for tag, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), (x1, y1, x1 + 8, y1 + 8)):
            ET.SubElement(bb, tag).text = str(v)
    return ET.ElementTree(ann)


def write_voc(root: Union[str, os.PathLike], splits: Optional[Dict[str, int]] = None, seed: int = 0,
              layout: str = 'devkit', classes: Sequence[str] = VOC_CLASSES, image_size: Tuple[int, int] = (64, 48),
              max_labels: int = 3) -> Dict[str, Any]:
    """Write a VOC 2007 devkit: ``Annotations/*.xml``, ``ImageSets/Main/{split}.txt``, ``JPEGImages/*.jpg``.

    Args:
        root: where to write.
        splits: {split: number of images}; default ``{'trainval': 6, 'test': 5}``. Ids are disjoint, 6-digit.
        layout: ``'devkit'`` (root/VOCdevkit/VOC2007), ``'voc2007'`` (root/VOC2007) or ``'direct'`` (root itself).
        classes: class names to draw objects from.
        max_labels: each image gets 1..max_labels classes, each with 1–2 objects, ~30 % marked difficult.
            Image 0 of every split always has a difficult-only class and image 1 a class with one difficult and
            one non-difficult object (which is present).

    Returns:
        dict with ``voc_root``, ``ids`` {split: [ids]}, ``present`` / ``difficult_only`` {id: set of names}, and
        ``ternary`` {split: int8 [N, C] array: 1 present, -1 difficult-only, 0 absent} in ``classes`` order.
    """
    root = os.fspath(root)
    splits = splits or {'trainval': 6, 'test': 5}
    voc_root = {'devkit': os.path.join(root, 'VOCdevkit', 'VOC2007'), 'voc2007': os.path.join(root, 'VOC2007'),
                'direct': root}[layout]
    for sub in ('Annotations', os.path.join('ImageSets', 'Main'), 'JPEGImages'):
        os.makedirs(os.path.join(voc_root, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    ids: Dict[str, List[str]] = {}
    present: Dict[str, set] = {}
    difficult_only: Dict[str, set] = {}
    ternary: Dict[str, np.ndarray] = {}
    next_id = 5
    for split, n in splits.items():
        ids[split] = []
        tern = np.zeros((n, len(classes)), dtype=np.int8)
        for k in range(n):
            image_id = f'{next_id:06d}'
            next_id += 3
            chosen = list(rng.choice(len(classes), size=int(rng.integers(1, max_labels + 1)), replace=False))
            objects: List[Tuple[str, int]] = []
            for j, c in enumerate(chosen):
                if k == 0 and j == 0:
                    flags = [1, 1]  # difficult-only
                elif k == 1 and j == 0:
                    flags = [1, 0]  # difficult + non-difficult → present
                else:
                    flags = [int(rng.random() < 0.3) for _ in range(int(rng.integers(1, 3)))]
                objects += [(classes[c], f) for f in flags]
                tern[k, c] = 1 if 0 in flags else -1
            rng.shuffle(objects)
            _voc_xml(image_id, objects, image_size, rng).write(os.path.join(voc_root, 'Annotations', f'{image_id}.xml'))
            write_image(os.path.join(voc_root, 'JPEGImages', f'{image_id}.jpg'), size=image_size, seed=next_id)
            present[image_id] = {classes[c] for c in np.flatnonzero(tern[k] == 1)}
            difficult_only[image_id] = {classes[c] for c in np.flatnonzero(tern[k] == -1)}
            ids[split].append(image_id)
        ternary[split] = tern
        with open(os.path.join(voc_root, 'ImageSets', 'Main', f'{split}.txt'), 'w') as f:
            f.write(''.join(f'{i}\n' for i in ids[split]))
    return dict(voc_root=voc_root, ids=ids, present=present, difficult_only=difficult_only, ternary=ternary,
                classes=list(classes))


def write_csv(root: Union[str, os.PathLike], split: str = 'train', num_images: int = 6,
              label_names: Sequence[str] = ('cat', 'dog', 'traffic light'), seed: int = 0, layout: str = 'list',
              sep: str = ';', classes_txt: bool = False, num_empty: int = 0, num_ignore: int = 0,
              image_size: Tuple[int, int] = (64, 48)) -> Dict[str, Any]:
    """Write ``root/{split}.csv`` with images under ``root/images/{split}/``.

    Args:
        layout: ``'list'`` (``image,labels`` with labels joined by ``sep``) or ``'wide'`` (``image,<class>...``
            with 1/0/-1 cells).
        classes_txt: also write ``root/classes.txt`` with ``label_names`` (one per line).
        num_empty: rows with no label (the last ones).
        num_ignore: entries set to -1 (not annotated) in the first rows, on absent classes: a ``-1`` cell (wide
            layout) or a ``?name`` label (list layout).

    Returns:
        dict with ``csv_file``, ``rows`` [(relative path, [labels])], ``label_names``, ``targets`` [N, C] for all
        rows (1/0/-1) and ``non_empty`` (bool mask of rows with a present label).
    """
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    c = len(label_names)
    targets = np.zeros((num_images, c), dtype=np.float32)
    rows = []
    for k in range(num_images):
        rel = f'images/{split}/{split}_{k:03d}.jpg'
        write_image(os.path.join(root, rel), size=image_size, seed=seed * 1000 + k)
        labels = [] if k >= num_images - num_empty else \
            sorted(rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False).tolist())
        targets[k, labels] = 1.0
        rows.append((rel, [label_names[i] for i in labels]))
    ignored = 0
    for k in range(num_images):
        if ignored >= num_ignore:
            break
        absent = np.flatnonzero(targets[k] == 0)
        if len(absent):
            targets[k, absent[0]] = -1.0
            ignored += 1
    csv_file = os.path.join(root, f'{split}.csv')
    with open(csv_file, 'w', encoding='utf-8', newline='') as f:
        if layout == 'list':
            f.write('image,labels\n')
            for k, (rel, labels) in enumerate(rows):
                unknown = ['?' + label_names[c] for c in np.flatnonzero(targets[k] == -1)]
                f.write(f'{rel},{sep.join(labels + unknown)}\n')
        elif layout == 'wide':
            f.write('image,' + ','.join(label_names) + '\n')
            for k, (rel, _) in enumerate(rows):
                f.write(rel + ',' + ','.join(str(int(v)) for v in targets[k]) + '\n')
        else:
            raise ValueError(f'unknown layout {layout!r}')
    if classes_txt:
        with open(os.path.join(root, 'classes.txt'), 'w', encoding='utf-8') as f:
            f.write(''.join(f'{n}\n' for n in label_names))
    return dict(csv_file=csv_file, rows=rows, label_names=list(label_names), targets=targets,
                non_empty=(targets == 1).any(axis=1))


# ----------------------------------------------------------------------------------------------------------------
# srdl-train on a tiny CSV data set (tests/test_training_*.py, test_cli_train.py, ...)
# ----------------------------------------------------------------------------------------------------------------
#: tiny, fast and deterministic: the 10-class test ResNet at 64 px, 3 classes, 8 training / 6 validation images
TRAIN_BASE = dict(data='csv', model='srdl_test_resnet', img_size=64, lr=1e-3, workers=0, progress=False,
                  label_embeddings='none', log_interval=1)


def write_train_csv(root: Union[str, os.PathLike]) -> str:
    """The srdl-train tests' data under ``root``: 8 training and 6 validation images of 3 classes (CSV layout)."""
    write_csv(root, split='train', num_images=8, seed=0)
    write_csv(root, split='val', num_images=6, seed=1)
    return str(root)


def train_config(root: str, output: Union[str, os.PathLike], **kw: Any):
    """A :class:`srdl_timm.training.TrainConfig` for ``root``'s CSV data into ``output``: TRAIN_BASE + ``kw``."""
    from srdl_timm.training import TrainConfig
    return TrainConfig(root=root, output=str(output), **dict(TRAIN_BASE, **kw))


def train_cli_args(csv_root: str, output: Union[str, os.PathLike], *flags: str) -> List[str]:
    """``srdl-train`` flags for one short epoch (batch 4) on ``csv_root``'s data into ``output``, then ``flags``."""
    return ['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64', '--epochs', '1',
            '--batch-size', '4', '--lr', '1e-3', '--workers', '0', '--label-embeddings', 'none', '--no-progress',
            '--log-level', 'WARNING', '--output', str(output), *flags]


# ----------------------------------------------------------------------------------------------------------------
# a tiny published SRDL model (tests/test_hub.py, test_model_card.py, test_manifest.py, test_cli_publish.py)
# ----------------------------------------------------------------------------------------------------------------
HUB_IMG = 64
HUB_NAMES = ['cat', 'dog', 'traffic light']
#: non-default hyper-parameters, so that a rebuild from config.json can only match if every one is recorded
HUB_HPARAMS = dict(embed_dim=8, graph_layers=1, use_ca=False, oe_topk=2, oe_alpha=0.3, attention_impl='reference',
                   global_pool='avg')
HUB_PROTOCOL = {'ap_definitions': {'mAP_interpolated': 'all-point interpolated AP'}, 'split': 'val',
                'input_size': [3, HUB_IMG, HUB_IMG], 'interpolation': 'bilinear', 'resize': 'squash to input_size',
                'dataset': {'name': 'toy-csv val', 'root': '/somewhere/local'}, 'units': 'percent'}
#: an srdl-validate style report of the toy model
HUB_REPORT = {'model': 'srdl_test_resnet', 'metrics': {'mAP_interpolated': 61.25, 'mAP_non_interpolated': 58.5,
                                                       'CF1': 40.0, 'OF1': 45.5, 'threshold': 0.5, 'num_samples': 6},
              'protocol': HUB_PROTOCOL, 'label_names': HUB_NAMES}
#: environment of the subprocesses these tests start (one thread; ``import fixtures_data`` works there too, and
#: ``import srdl_timm`` imports the package this process imported)
HUB_ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([
    os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(srdl_timm.__file__)))]))


def perturb(model, seed: int = 1):
    """Move every float tensor (parameters and buffers) away from any fresh initialisation."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=gen) * 0.05)
    return model


#: the toy model's per-class decision thresholds, as if tuned on a validation split
HUB_THRESHOLDS = dict(label_thresholds=[0.25, 0.5, 0.75], label_thresholds_info={
    'rule': 'f1', 'tuned_on': {'data': 'csv', 'split': 'val', 'num_images': 12, 'images_sha256': 'a' * 64},
    'untuned': ['dog'], 'tool': 'tests'})


def toy_srdl_model():
    """srdl_test_resnet with 3 named classes, random label embeddings, HUB_HPARAMS, perturbed weights and the
    decision thresholds HUB_THRESHOLDS (eval)."""
    import timm

    import srdl_timm  # noqa: F401  registers the SRDL architectures
    from srdl_timm.labels import LabelThresholds
    embeddings = np.random.default_rng(0).standard_normal((3, HUB_HPARAMS['embed_dim'])).astype(np.float32)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=embeddings, label_names=HUB_NAMES,
                              label_thresholds=LabelThresholds.from_json(HUB_THRESHOLDS, 'HUB_THRESHOLDS'),
                              **HUB_HPARAMS)
    return perturb(model).eval()


def model_out(model, x):
    """``model``'s eval-mode output for ``x``, without gradients."""
    import torch
    with torch.no_grad():
        return model.eval()(x)


def populate_hub_cache(cache, repo_id: str, folder, commit: str):
    """Lay out a Hugging Face cache entry (models--org--name/{blobs,refs/main,snapshots/<commit>/}) for folder."""
    import shutil

    from srdl_timm.utils import sha256_file
    repo_dir = cache / ('models--' + repo_id.replace('/', '--'))
    (repo_dir / 'blobs').mkdir(parents=True, exist_ok=True)
    (repo_dir / 'refs').mkdir(exist_ok=True)
    snapshot = repo_dir / 'snapshots' / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        blob = repo_dir / 'blobs' / sha256_file(f)
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / 'refs' / 'main').write_text(commit)
    return snapshot


def run_python(script: str, env: dict, timeout: int = 120):
    """Run ``script`` (dedented) in a fresh Python process; assert it succeeded; return the CompletedProcess."""
    import subprocess
    import sys
    import textwrap
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'subprocess failed:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr[-4000:]}'
    return proc
