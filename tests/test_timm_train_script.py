"""SRDL inside timm's own training machinery.

1. timm 1.0's training stack (``timm.task`` + ``timm.data.create_loader`` + ``timm.optim`` + ``timm.scheduler`` + the
   task's EMA and multi-label evaluator) trains SRDL *with OE* through :class:`srdl_timm.task.SRDLTask` on real
   images.
2. timm's ``train.py`` (from timm's source) fine-tunes SRDL — CAR only, its multi-label task has no OE loss — when
   told ``--device-modules srdl_timm``. The script is not in timm's wheel; the test looks for it in
   ``$SRDL_TIMM_TRAIN_PY``, then in timm's source distribution from PyPI (``pip download --no-binary :all:``), and
   skips, saying why, when neither has it. Its multi-label datasets come through Hugging Face ``datasets``
   (``--dataset hfds/<folder>``), so that package must be importable too.
"""
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_loader
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import srdl_timm  # noqa: F401
from srdl_timm.data import create_dataset
from srdl_timm.metrics import MultiLabelMetrics
from srdl_timm.task import SRDLTask

from fixtures_data import write_csv  # tests/fixtures_data.py




def test_timm_task_stack_trains_srdl_with_object_erasing(tmp_path):
    """SRDLTask + timm's loader, optimizer factory, step scheduler and EMA train SRDL with OE (the training forward
    yields (logits, erased_logits); the loss is L_ori + L_era) on 8 real images: the epoch-mean loss falls, and
    timm's multi-label evaluator on the EMA model agrees with srdl_timm's non-interpolated mAP."""
    write_csv(tmp_path, split='train', num_images=8, seed=0)
    write_csv(tmp_path, split='val', num_images=6, seed=1)
    train_ds, val_ds = create_dataset('csv', str(tmp_path), 'train'), create_dataset('csv', str(tmp_path), 'val')
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
# timm's train.py
# --------------------------------------------------------------------------------------------------------------
def _find_train_py(cache: str) -> str:
    """Path to timm's train.py matching the installed timm, or pytest.skip with the reason."""
    env = os.environ.get('SRDL_TIMM_TRAIN_PY')
    if env:
        if not os.path.isfile(env):
            pytest.fail(f'SRDL_TIMM_TRAIN_PY={env} is not a file')
        return env
    version = timm.__version__
    target = os.path.join(cache, f'timm-{version}-train.py')
    if os.path.isfile(target):
        return target
    sdists = glob.glob(os.path.join(cache, f'timm-{version}.tar.gz'))
    if not sdists:
        proc = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
                               '--dest', cache, f'timm=={version}'], capture_output=True, text=True, timeout=300)
        sdists = glob.glob(os.path.join(cache, f'timm-{version}.tar.gz'))
        if proc.returncode != 0 or not sdists:
            pytest.skip(f'cannot download timm {version}\'s source distribution (pip download failed: '
                        f'{proc.stderr.strip()[-300:]}); set SRDL_TIMM_TRAIN_PY to a train.py of timm {version}')
    with tarfile.open(sdists[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.count('/') == 1 and m.name.endswith('/train.py')]
        if not members:
            pytest.skip(f'timm {version}\'s source distribution ({os.path.basename(sdists[0])}) does not contain '
                        f'train.py: the script is only in timm\'s git repository (tag v{version}). Set '
                        f'SRDL_TIMM_TRAIN_PY=/path/to/pytorch-image-models/train.py to run this test')
        data = tar.extractfile(members[0]).read()
    with open(target, 'wb') as f:
        f.write(data)
    return target


def _hf_datasets_available(env) -> bool:
    # run outside tests/ so that tests/datasets.py does not shadow Hugging Face's package
    proc = subprocess.run([sys.executable, '-c', 'import datasets, sys; sys.exit(0 if hasattr(datasets, '
                           '"load_dataset") else 1)'], cwd=tempfile.gettempdir(), env=env, capture_output=True)
    return proc.returncode == 0


def _write_hf_imagefolder(root: str, splits: dict) -> None:
    """A Hugging Face ``imagefolder`` dataset: ``root/{split}/*.jpg`` + ``metadata.jsonl`` with a ``labels`` list of
    class indices per image (timm: ``--target-key labels``, encoded multi-hot by its multi-label task)."""
    for split, rows in splits.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        with open(os.path.join(root, split, 'metadata.jsonl'), 'w') as f:
            for i, labels in enumerate(rows):
                name = f'{i:03d}.jpg'
                color = tuple(int(40 + 60 * c) for c in (0 in labels, 1 in labels, 2 in labels))
                Image.new('RGB', (48, 40), color=color).save(os.path.join(root, split, name))
                f.write(json.dumps({'file_name': name, 'labels': labels}) + '\n')


def test_timm_train_py_fine_tunes_srdl_car_only(tmp_path):
    """timm's train.py with --device-modules srdl_timm and --task multilabel trains srdl_test_resnet (CAR only: OE
    stays off because stock train.py cannot select SRDL's loss) for 2 epochs on a Hugging Face imagefolder; it
    reports mAP, and its checkpoint loads strictly into a fresh SRDL model."""
    cache = os.environ.get('SRDL_TIMM_SDIST_CACHE', os.path.join(tempfile.gettempdir(), 'srdl-timm-sdist-cache'))
    os.makedirs(cache, exist_ok=True)
    train_py = _find_train_py(cache)
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1')
    if not _hf_datasets_available(env):
        pytest.skip('timm\'s train.py reads multi-label datasets through Hugging Face `datasets` '
                    '(--dataset hfds/...), which is not installed: pip install datasets')
    data = str(tmp_path / 'hf')
    rows = [[0], [1, 2], [2], [0, 1], [1], [0, 2], [2, 1, 0], [0]]
    _write_hf_imagefolder(data, {'train': rows, 'validation': rows[:6]})
    out = tmp_path / 'out'
    cmd = [sys.executable, train_py, '--device-modules', 'srdl_timm', '--model', 'srdl_test_resnet',
           '--task', 'multilabel', '--dataset', f'hfds/{data}', '--data-dir', str(tmp_path / 'hf_cache'),
           '--target-key', 'labels', '--num-classes', '3', '--train-split', 'train', '--val-split', 'validation',
           '--img-size', '64', '--batch-size', '4', '--epochs', '2', '--warmup-epochs', '0', '--sched', 'step',
           '--opt', 'adam', '--lr', '1e-3', '--weight-decay', '0', '--smoothing', '0', '--no-aug',
           '--device', 'cpu', '--workers', '0', '--output', str(out), '--experiment', 'srdl']
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = (out / 'srdl' / 'summary.csv').read_text().strip().splitlines()
    header = summary[0].split(',')
    assert len(summary) == 3 and 'eval_map' in header
    for line in summary[1:]:
        assert 0.0 <= float(line.split(',')[header.index('eval_map')]) <= 100.0
    checkpoint = out / 'srdl' / 'last.pth.tar'
    assert checkpoint.is_file()
    model = timm.create_model('srdl_test_resnet', num_classes=3)
    timm.models.load_checkpoint(model, str(checkpoint), use_ema=False, strict=True, weights_only=True)
    assert not model.object_erasing
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
