"""``python -m srdl_timm.timm_script``: timm's own validate.py / inference.py run SRDL models.

timm's scripts are in neither its wheel nor its sdist, and nothing here fakes them: the end-to-end tests run the
real scripts of a timm checkout when ``SRDL_TIMM_SCRIPTS_DIR`` points at it (``train.py``, ``validate.py``,
``inference.py`` at its top level) and skip, saying so, otherwise. inference.py also needs ``pandas`` (the
``timm-train`` extra). Each script runs in a subprocess, as a user runs it.

Run: SRDL_TIMM_SCRIPTS_DIR=/path/to/pytorch-image-models OMP_NUM_THREADS=1 pytest -q tests/test_timm_script.py
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_dataset, create_loader, resolve_data_config

import srdl_timm  # noqa: F401
from srdl_timm import hub, timm_script

IMG = 64
NAMES = ['bird', 'cat', 'dog']
SCRIPTS_DIR = os.environ.get(timm_script.SCRIPTS_DIR_ENV)


def _script(name: str) -> str:
    """Path of timm's ``name`` script, or skip saying how to provide it."""
    if not SCRIPTS_DIR:
        pytest.skip(f'{timm_script.SCRIPTS_DIR_ENV} is not set: point it at a checkout of timm\'s repository '
                    f'(its {name} is in neither timm\'s wheel nor its sdist) to run this test')
    path = os.path.join(SCRIPTS_DIR, name)
    if not os.path.isfile(path):
        pytest.fail(f'{timm_script.SCRIPTS_DIR_ENV}={SCRIPTS_DIR} has no {name}')
    return path


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore')


def _launch(args, cwd, launcher=True):
    cmd = [sys.executable, '-m', 'srdl_timm.timm_script', *args] if launcher else [sys.executable, *args]
    return subprocess.run(cmd, cwd=str(cwd), env=_env(), capture_output=True, text=True, timeout=600)


def _image_folder(root):
    """A timm ImageFolder: root/<class>/<class>_<i>.png, 3 real-pixel images per class (unique file names)."""
    rng = np.random.default_rng(0)
    for name in NAMES:
        os.makedirs(root / name, exist_ok=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f'{name}_{i}.png')
    return root


def _model():
    torch.manual_seed(0)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_names=NAMES,
                              label_embeddings=torch.randn(3, 16))
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape) * 0.05)
    return model.eval()


def _logits(model, folder):
    """The model's logits on the folder through timm's own eval pipeline (the loader the scripts build)."""
    dataset = create_dataset('', root=str(folder), split='validation')
    config = resolve_data_config({'img_size': IMG}, model=model)
    loader = create_loader(dataset, batch_size=4, use_prefetcher=True, num_workers=0, device=torch.device('cpu'),
                           **{k: config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct',
                                                     'crop_mode')})
    outputs, targets = [], []
    with torch.no_grad():
        for images, target in loader:
            outputs.append(model(images))
            targets.append(target)
    names = [os.path.basename(f) for f in dataset.filenames()]
    return torch.cat(outputs), torch.cat(targets), names


def _console_result(stdout: str):
    """The JSON the scripts print after their ``--result`` line."""
    assert '--result' in stdout, stdout[-2000:]
    return json.loads(stdout.split('--result', 1)[1])


# --------------------------------------------------------------------------------------------------------------
# the launcher itself (no timm script needed)
# --------------------------------------------------------------------------------------------------------------
def test_usage_and_a_missing_script_say_what_to_do(capsys, monkeypatch):
    """--help prints the launcher's usage (exit 0); a script that is not there exits 2 naming the path and
    SRDL_TIMM_SCRIPTS_DIR, with no traceback."""
    assert timm_script.main(['--help']) == 0
    assert 'SCRIPT' in capsys.readouterr().out
    monkeypatch.setenv(timm_script.SCRIPTS_DIR_ENV, '/nonexistent/timm-checkout')
    assert timm_script.main(['validate.py', '--model', 'srdl_test_resnet']) == 2
    err = capsys.readouterr().err
    assert '/nonexistent/timm-checkout/validate.py' in err and timm_script.SCRIPTS_DIR_ENV in err
    assert timm_script.main(['--probs', 'maybe', 'validate.py']) == 2
    assert '--probs' in capsys.readouterr().err


def test_is_multilabel_model_sees_through_wrappers():
    """SRDL models are multi-label, also inside DataParallel; a single-label timm model is not."""
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16))
    assert timm_script.is_multilabel_model(model)
    assert timm_script.is_multilabel_model(torch.nn.DataParallel(model))
    assert not timm_script.is_multilabel_model(timm.create_model('test_resnet', num_classes=3))


def test_inference_softmax_expression_is_patched_exactly_once():
    """The real inference.py holds exactly one `output.softmax(-1)`; the patched source swaps only that and keeps
    every line number (tracebacks point at the script's own lines)."""
    with open(_script('inference.py'), encoding='utf-8') as f:
        source = f.read()
    patched = timm_script._patch_inference_source(source)
    assert patched is not None and 'output.softmax(-1)' not in patched
    assert patched.count(f'{timm_script._PROBS_FN}(output)') == 1
    assert patched.count('\n') == source.count('\n')
    assert timm_script._patch_inference_source(source.replace('output.softmax(-1)', 'output')) is None


# --------------------------------------------------------------------------------------------------------------
# timm's validate.py and inference.py, run for real
# --------------------------------------------------------------------------------------------------------------
def test_validate_py_evaluates_an_srdl_checkpoint_only_through_the_launcher(tmp_path):
    """timm's validate.py alone does not know srdl_* ("Unknown model"); through the launcher it loads the
    checkpoint and reports exactly the top-1/top-5 that the same weights give on timm's own eval pipeline."""
    validate_py = _script('validate.py')
    folder = _image_folder(tmp_path / 'imgs')
    model = _model()
    save_file(model.state_dict(), str(tmp_path / 'model.safetensors'))
    args = [validate_py, '--model', 'srdl_test_resnet', '--num-classes', '3', '--checkpoint', 'model.safetensors',
            '--data-dir', str(folder), '--device', 'cpu', '--img-size', str(IMG), '--workers', '0',
            '--batch-size', '4']

    plain = _launch(args, tmp_path, launcher=False)
    assert plain.returncode != 0 and 'Unknown model' in plain.stdout + plain.stderr

    proc = _launch(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = _console_result(proc.stdout)
    logits, targets, _ = _logits(model, folder)
    top1 = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    assert result['model'] == 'srdl_test_resnet'
    assert result['top1'] == pytest.approx(top1, abs=1e-3)
    assert result['top5'] == pytest.approx(100.0)  # 3 classes: top-5 (clipped to 3) always hits


def test_inference_py_prints_sigmoid_probabilities_with_label_names(tmp_path):
    """Through the launcher, timm's inference.py on a published SRDL folder (local-dir:) prints per-class sigmoid
    probabilities (not a softmax: they need not sum to 1) with the model's label names, equal to the model's own
    sigmoid outputs; --probs softmax restores the script's softmax."""
    inference_py = _script('inference.py')
    if importlib.util.find_spec('pandas') is None:
        pytest.skip('timm\'s inference.py imports pandas: pip install "srdl-timm[timm-train]"')
    folder = _image_folder(tmp_path / 'imgs')
    model = _model()
    hub.save_pretrained_dir(model, tmp_path / 'published')
    args = [inference_py, '--model', 'local-dir:published', '--data-dir', str(folder),
            '--device', 'cpu', '--img-size', str(IMG), '--workers', '0', '--batch-size', '4', '--topk', '3',
            '--label-type', 'name', '--results-dir', 'out', '--results-file', 'predictions']
    logits, _, names = _logits(model, folder)
    expected = {name: row for name, row in zip(names, logits)}

    proc = _launch(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = _console_result(proc.stdout)
    assert sorted(result) == sorted(names)
    sums = []
    for name, row in result.items():
        probs = expected[name].sigmoid()
        order = probs.argsort(descending=True)
        assert row['label'] == [NAMES[i] for i in order]
        np.testing.assert_allclose(row['prob'], probs[order].numpy(), atol=1e-5)
        sums.append(sum(row['prob']))
    assert any(abs(s - 1.0) > 1e-3 for s in sums)  # independent sigmoids, not a distribution

    proc = _launch(['--probs', 'softmax', *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, row in _console_result(proc.stdout).items():
        probs = expected[name].softmax(-1)
        np.testing.assert_allclose(row['prob'], probs.sort(descending=True).values.numpy(), atol=1e-5)
