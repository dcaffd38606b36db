"""SRDL inside timm's own training machinery.

1. timm 1.0's training stack (``timm.task`` + ``timm.data.create_loader`` + ``timm.optim`` + ``timm.scheduler`` + the
   task's EMA and multi-label evaluator) trains SRDL *with OE* through :class:`srdl_timm.training.SRDLTask` on real
   images.
2. timm's own multi-label data pipeline (``hfds/`` reader of a Hugging Face ``imagefolder`` with a ``labels`` list,
   ``timm.data.MultiLabelTarget``, ``create_loader`` with its prefetcher, ``Mixup(multi_label=True)``) feeds
   ``SRDLTask``, and timm's ``MultiLabelClassificationEvaluator`` scores the result (needs ``datasets``: the
   ``timm-train`` extra).
3. timm's ``train.py`` through ``python -m srdl_timm.timm_script``: single-label fine-tuning of an SRDL model, and
   multi-label training (``--task multilabel``) when the script has that flag. The script is in neither timm's
   wheel nor its sdist; the tests run the real script of a timm checkout named by ``$SRDL_TIMM_TRAIN_PY`` or
   ``$SRDL_TIMM_SCRIPTS_DIR``, and skip, saying why (and which timm version the script is from), otherwise.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_loader
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import srdl_timm  # noqa: F401
from srdl_timm.data import create_multilabel_dataset
from srdl_timm.metrics import MultiLabelMetrics
from srdl_timm.training import SRDLTask
from srdl_timm.timm_script import SCRIPTS_DIR_ENV, script_version

from fixtures_data import write_csv  # tests/fixtures_data.py




def test_timm_task_stack_trains_srdl_with_object_erasing(tmp_path):
    """SRDLTask + timm's loader, optimizer factory, step scheduler and EMA train SRDL with OE (the training forward
    yields (logits, erased_logits); the loss is L_ori + L_era) on 8 real images: the epoch-mean loss falls, and
    timm's multi-label evaluator on the EMA model agrees with srdl_timm's non-interpolated mAP."""
    write_csv(tmp_path, split='train', num_images=8, seed=0)
    write_csv(tmp_path, split='val', num_images=6, seed=1)
    train_ds = create_multilabel_dataset('csv', str(tmp_path), 'train')
    val_ds = create_multilabel_dataset('csv', str(tmp_path), 'val')
    common = dict(input_size=(3, 64, 64), batch_size=4, use_prefetcher=False, num_workers=0,
                  device=torch.device('cpu'))
    train_loader = create_loader(train_ds, is_training=True, no_aug=True, **common)
    val_loader = create_loader(val_ds, is_training=False, **common)

    torch.manual_seed(0)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_names=train_ds.label_names,
                              label_embeddings=torch.randn(3, 16))
    task = SRDLTask(model, verbose=False)
    optimizer = create_optimizer_v2(model, opt='adam', lr=1e-3, weight_decay=5e-4)
    epochs = 5
    scheduler, _ = create_scheduler_v2(optimizer, sched='step', num_epochs=epochs, decay_epochs=4, decay_rate=0.1)
    task.setup_ema(decay=0.5)
    epoch_losses, step = [], 0
    for epoch in range(epochs):
        scheduler.step(epoch)
        task.train()
        total = 0.0
        for images, targets in train_loader:
            assert targets.dtype == torch.float32 and targets.shape == (4, 3)
            with torch.no_grad():
                out = model(images)
            assert isinstance(out, tuple) and len(out) == 2  # OE is on in training
            result = task(images, targets)
            optimizer.zero_grad()
            result['loss'].backward()
            optimizer.step()
            step += 1
            task.update_ema(step)
            total += result['loss'].item()
        epoch_losses.append(total / len(train_loader))
    assert epoch_losses[-1] < epoch_losses[0] - 0.05, epoch_losses
    assert optimizer.param_groups[0]['lr'] == pytest.approx(1e-4)  # the step schedule decayed at epoch 4

    evaluator = task.create_evaluator()
    ours = MultiLabelMetrics(num_classes=3)
    eval_model = task.get_eval_model(ema=True)
    eval_model.eval()
    with torch.no_grad():
        for images, targets in val_loader:
            logits = eval_model(images)
            assert isinstance(logits, torch.Tensor)  # eval: logits only, OE removed
            evaluator.update(logits, targets)
            ours.update(logits, targets)
    timm_metrics, our_metrics = evaluator.compute(), ours.compute()
    assert 0.0 <= timm_metrics['map'] <= 100.0
    if our_metrics['num_classes_evaluated'] == 3:  # timm counts a class without positives as AP 0, we leave it out
        assert timm_metrics['map'] == pytest.approx(our_metrics['mAP_non_interpolated'], abs=1e-3)


# --------------------------------------------------------------------------------------------------------------
# timm's own multi-label data pipeline (timm >= 1.0.31) feeding SRDLTask
# --------------------------------------------------------------------------------------------------------------
def _write_hf_imagefolder(root: str, splits: dict) -> None:
    """A Hugging Face ``imagefolder`` dataset: ``root/{split}/*.jpg`` + ``metadata.jsonl`` with a ``labels`` list of
    class indices per image (timm: ``--target-key labels``, encoded multi-hot by ``MultiLabelTarget``)."""
    for split, rows in splits.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        with open(os.path.join(root, split, 'metadata.jsonl'), 'w') as f:
            for i, labels in enumerate(rows):
                name = f'{i:03d}.jpg'
                color = tuple(int(40 + 60 * c) for c in (0 in labels, 1 in labels, 2 in labels))
                Image.new('RGB', (48, 40), color=color).save(os.path.join(root, split, name))
                f.write(json.dumps({'file_name': name, 'labels': labels}) + '\n')


ROWS = [[0], [1, 2], [2], [0, 1], [1], [0, 2], [2, 1, 0], [0]]


def test_timm_multilabel_data_pipeline_feeds_srdl_task(tmp_path, monkeypatch):
    """timm's hfds reader + MultiLabelTarget + create_loader (prefetcher) + Mixup(multi_label=True) give dense
    float targets that SRDLTask (a timm MultiLabelClassificationTask) trains on with OE; the epoch loss falls and
    timm's MultiLabelClassificationEvaluator reports the same mAP as srdl_timm's non-interpolated AP."""
    if importlib.util.find_spec('datasets') is None:
        pytest.skip('timm reads multi-label datasets through Hugging Face `datasets` (hfds/): '
                    'pip install "srdl-timm[timm-train]"')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    from timm.data import Mixup, MultiLabelTarget, create_dataset as timm_create_dataset
    from timm.task import MultiLabelClassificationTask
    from timm.task.evaluator import MultiLabelClassificationEvaluator

    data = str(tmp_path / 'hf')
    _write_hf_imagefolder(data, {'train': ROWS, 'validation': ROWS})
    loaders = {}
    for split in ('train', 'validation'):
        dataset = timm_create_dataset(f'hfds/{data}', root=str(tmp_path / 'cache'), split=split,
                                      target_key='labels', target_transform=MultiLabelTarget(3))
        loaders[split] = create_loader(dataset, input_size=(3, 64, 64), batch_size=4, is_training=split == 'train',
                                       no_aug=True, num_workers=0, use_prefetcher=True, device=torch.device('cpu'))
    mixup = Mixup(mixup_alpha=0.4, num_classes=3, label_smoothing=0.0, multi_label=True)

    torch.manual_seed(0)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16))
    task = SRDLTask(model, verbose=False)
    assert isinstance(task, MultiLabelClassificationTask)
    optimizer = create_optimizer_v2(model, opt='adam', lr=2e-3)
    losses = []
    for epoch in range(6):
        task.train()
        total = 0.0
        for images, targets in loaders['train']:
            assert targets.dtype == torch.float32 and targets.shape == (4, 3)
            if epoch < 3:  # mixed multi-hot targets stay per-class probabilities
                images, targets = mixup(images, targets)
                assert ((targets >= 0) & (targets <= 1)).all()
            loss = task(images, targets)['loss']
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / len(loaders['train']))
    assert losses[-1] < losses[0], losses

    evaluator = MultiLabelClassificationEvaluator(device=torch.device('cpu'))
    ours = MultiLabelMetrics(num_classes=3)
    model.eval()
    with torch.no_grad():
        for images, targets in loaders['validation']:
            assert targets.tolist() in ([[1., 0., 0.], [0., 1., 1.], [0., 0., 1.], [1., 1., 0.]],
                                        [[0., 1., 0.], [1., 0., 1.], [1., 1., 1.], [1., 0., 0.]])
            logits = model(images)
            evaluator.update(logits, targets)
            ours.update(logits, targets)
    assert evaluator.compute()['map'] == pytest.approx(ours.compute()['mAP_non_interpolated'], abs=1e-3)


# --------------------------------------------------------------------------------------------------------------
# timm's train.py, run through python -m srdl_timm.timm_script
# --------------------------------------------------------------------------------------------------------------
def _train_py() -> str:
    """timm's train.py from $SRDL_TIMM_TRAIN_PY or $SRDL_TIMM_SCRIPTS_DIR, else skip saying how to provide it."""
    path = os.environ.get('SRDL_TIMM_TRAIN_PY')
    if not path and os.environ.get(SCRIPTS_DIR_ENV):
        path = os.path.join(os.environ[SCRIPTS_DIR_ENV], 'train.py')
    if not path:
        pytest.skip(f'timm\'s train.py is in neither timm\'s wheel nor its sdist: set {SCRIPTS_DIR_ENV} to a checkout '
                    'of timm\'s repository (or SRDL_TIMM_TRAIN_PY to its train.py) to run this test')
    if not os.path.isfile(path):
        pytest.fail(f'timm train.py not found: {path}')
    return path


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore')


def _launch(args, cwd):
    return subprocess.run([sys.executable, '-m', 'srdl_timm.timm_script', *args], cwd=str(cwd), env=_env(),
                          capture_output=True, text=True, timeout=600)


def _summary(path):
    lines = path.read_text().strip().splitlines()
    header = lines[0].split(',')
    return [dict(zip(header, line.split(','))) for line in lines[1:]]


def _image_folder(root):
    for split in ('train', 'validation'):
        for c, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
            os.makedirs(root / split / f'class{c}', exist_ok=True)
            for i in range(3):
                shade = tuple(max(0, v - 30 * i) for v in color)
                Image.new('RGB', (48, 40), color=shade).save(root / split / f'class{c}' / f'{c}_{i}.png')
    return root


def test_timm_train_py_fine_tunes_srdl_single_label_through_the_launcher(tmp_path):
    """timm's train.py (its own parser and loop), started by the launcher, fine-tunes srdl_test_resnet on an
    ImageFolder for 2 epochs: the train loss falls, its last.pth.tar loads strictly into a fresh SRDL model, and
    srdl-publish turns that checkpoint into a folder that timm loads with the same outputs."""
    train_py = _train_py()
    data = _image_folder(tmp_path / 'data')
    proc = _launch([train_py, '--model', 'srdl_test_resnet', '--num-classes', '3', '--data-dir', str(data),
                    '--img-size', '64', '--batch-size', '3', '--epochs', '2', '--warmup-epochs', '0', '--sched', 'step',
                    '--opt', 'adam', '--lr', '1e-3', '--weight-decay', '0', '--smoothing', '0', '--no-aug',
                    '--device', 'cpu', '--workers', '0', '--output', str(tmp_path / 'out'), '--experiment', 'sl'],
                   tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = _summary(tmp_path / 'out' / 'sl' / 'summary.csv')
    assert len(rows) == 2 and float(rows[1]['train_loss']) < float(rows[0]['train_loss'])
    checkpoint = tmp_path / 'out' / 'sl' / 'last.pth.tar'
    model = timm.create_model('srdl_test_resnet', num_classes=3)
    timm.models.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x)
    assert expected.shape == (1, 3)
    from srdl_timm.cli.publish import main as publish_main
    assert publish_main(['--checkpoint', str(checkpoint), '--local-dir', str(tmp_path / 'published'),
                         '--log-level', 'WARNING']) == 0
    published = timm.create_model(f'local-dir:{tmp_path / "published"}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(published(x), expected)


def test_timm_train_py_multilabel_task_fine_tunes_srdl_car_only(tmp_path):
    """timm's train.py --task multilabel (where the script has it) trains srdl_test_resnet (CAR only: OE stays off,
    stock train.py cannot select SRDL's loss) for 2 epochs on a Hugging Face imagefolder with a `labels` list; it
    reports mAP, and its checkpoint loads strictly into a fresh SRDL model."""
    train_py = _train_py()
    usage = _launch([train_py, '--help'], tmp_path)
    assert usage.returncode == 0, usage.stderr[-2000:]
    if '--task ' not in usage.stdout:
        version = script_version(train_py) or 'unknown version (no timm/version.py beside it)'
        pytest.skip(f'{train_py} (timm {version}) has no --task flag (its parser reads --task as --task-loss-weight): '
                    f'multi-label training with timm\'s train.py needs a script that has it (installed timm: '
                    f'{timm.__version__})')
    if importlib.util.find_spec('datasets') is None:
        pytest.skip('timm\'s train.py reads multi-label datasets through Hugging Face `datasets` (--dataset hfds/...): '
                    'pip install "srdl-timm[timm-train]"')
    data = str(tmp_path / 'hf')
    _write_hf_imagefolder(data, {'train': ROWS, 'validation': ROWS[:6]})
    out = tmp_path / 'out'
    proc = _launch([train_py, '--model', 'srdl_test_resnet', '--task', 'multilabel', '--dataset', f'hfds/{data}',
                    '--data-dir', str(tmp_path / 'hf_cache'), '--target-key', 'labels', '--num-classes', '3',
                    '--train-split', 'train', '--val-split', 'validation', '--img-size', '64', '--batch-size', '4',
                    '--epochs', '2', '--warmup-epochs', '0', '--sched', 'step', '--opt', 'adam', '--lr', '1e-3',
                    '--weight-decay', '0', '--smoothing', '0', '--no-aug', '--device', 'cpu', '--workers', '0',
                    '--output', str(out), '--experiment', 'srdl'], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = _summary(out / 'srdl' / 'summary.csv')
    assert len(rows) == 2 and all(0.0 <= float(r['eval_map']) <= 100.0 for r in rows)
    model = timm.create_model('srdl_test_resnet', num_classes=3)
    timm.models.load_checkpoint(model, str(out / 'srdl' / 'last.pth.tar'), use_ema=False, strict=True,
                                weights_only=True)
    assert not model.object_erasing
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
