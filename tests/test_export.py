"""Tests of srdl_timm/export.py and srdl_timm/cli/export.py (``srdl-export``): ONNX (opset >= 17, dynamic batch) run in onnxruntime and
TorchScript reloaded with torch.jit.load both match the PyTorch inference model.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_export.py
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from safetensors.torch import save_file

import srdl_timm  # noqa: F401
from srdl_timm.cli.export import main
from srdl_timm.export import (
    ExportCheckError, check_onnx, check_torchscript, export_onnx, export_torchscript, prepare_for_export)
from srdl_timm.errors import InputError
from srdl_timm.loading import model_args

from fixtures_attention import assert_attention_not_constant, spatial_attention_on

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')

LABELS = ['cat', 'dog', 'car']
SIZE = 64
RTOL, ATOL = 1e-4, 1e-5


def _model():
    torch.manual_seed(0)
    emb = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_names=LABELS, label_embeddings=emb)
    return spatial_attention_on(model).eval()  # the default zero-init f_s makes SA constant: exports would hide eq. 5


@pytest.fixture(scope='module')
def model():
    return _model()


def _reference(model, x):
    """Logits of the eager model with its default (chunked, memory-lean) attention kernels, after checking that its
    SA on ``x`` varies over positions (else an export differing in eq. 5 would match)."""
    model.set_attention_impl('auto')
    assert_attention_not_constant(model, x)
    with torch.no_grad():
        out = model(x).numpy()
    return out


def test_onnx_has_dynamic_batch_and_matches_pytorch_on_two_batch_sizes(model, tmp_path):
    """The ONNX file passes onnx.checker, declares opset 17 and a symbolic batch axis, and onnxruntime's logits
    equal the eager PyTorch model's (default attention kernels) at batch sizes 1 and 4."""
    path = str(tmp_path / 'srdl.onnx')
    export_onnx(model, path, (3, SIZE, SIZE))
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')) == 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == 'input' and out.name == 'logits'
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch in (1, 4):
        x = torch.randn(batch, 3, SIZE, SIZE)
        got = session.run(None, {'input': x.numpy()})[0]
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, _reference(model, x), rtol=RTOL, atol=ATOL)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta['label_names']) == LABELS
    assert json.loads(meta['input_size']) == [3, SIZE, SIZE]
    assert json.loads(meta['mean']) == pytest.approx(list(model.pretrained_cfg['mean']))


def test_onnx_opset_18_and_dynamic_size(model, tmp_path):
    """opset 18 is honoured; with dynamic_size the same file runs at another height/width, matching PyTorch; opsets
    below 17 are refused."""
    path = str(tmp_path / 'srdl18.onnx')
    export_onnx(model, path, (3, SIZE, SIZE), opset=18, dynamic_size=True)
    assert max(o.version for o in onnx.load(path).opset_import if o.domain in ('', 'ai.onnx')) == 18
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, 96, 128)
    np.testing.assert_allclose(session.run(None, {'input': x.numpy()})[0], _reference(model, x), rtol=RTOL,
                               atol=ATOL)
    report = check_onnx(path, model, (3, SIZE, SIZE), batch_sizes=(1, 3), dynamic_size=True)
    assert set(report) == {'1x3x64x64', '3x3x64x64', '3x3x96x96'}  # 3/4 of 64 rounds back to 64: +32
    with pytest.raises(ValueError, match='opset'):
        export_onnx(model, str(tmp_path / 'old.onnx'), (3, SIZE, SIZE), opset=16)


@pytest.mark.parametrize('method', ['script', 'trace'])
def test_torchscript_reloads_and_matches_pytorch(model, tmp_path, method):
    """A scripted or traced model saved to disk and reloaded with torch.jit.load gives the eager model's logits at
    batch sizes 1 and 3, and carries the preprocessing config with the label names."""
    path = str(tmp_path / f'srdl_{method}.pt')
    export_torchscript(model, path, (3, SIZE, SIZE), method=method)
    extra = {'config.json': ''}
    loaded = torch.jit.load(path, _extra_files=extra)
    assert isinstance(loaded, torch.jit.ScriptModule)
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            got = loaded(x).numpy()
        np.testing.assert_allclose(got, _reference(model, x), rtol=RTOL, atol=ATOL)
    config = json.loads(extra['config.json'])
    assert json.loads(config['label_names']) == LABELS and config['architecture'] == 'srdl_test_resnet'
    assert check_torchscript(path, model, (3, SIZE, SIZE))['3x3x64x64'] < ATOL


def test_export_uses_the_inference_model_even_from_a_training_oe_model(tmp_path):
    """A model left in training mode with object erasing on is exported as the eval model without OE: one logits
    output equal to the eval forward."""
    model = _model()
    model.set_object_erasing(True)
    model.train()
    path = str(tmp_path / 'from_train.onnx')
    export_onnx(model, path, (3, SIZE, SIZE))
    assert not model.training and not model.object_erasing and model.attention_impl == 'reference'
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['logits']
    x = torch.randn(2, 3, SIZE, SIZE)
    np.testing.assert_allclose(session.run(None, {'input': x.numpy()})[0], _reference(model, x), rtol=RTOL,
                               atol=ATOL)


def test_checks_fail_when_the_export_differs(tmp_path):
    """check_onnx/check_torchscript raise ExportCheckError when the exported file no longer matches the model
    (here: the PyTorch classifier bias changed after export)."""
    model = _model()
    onnx_path, ts_path = str(tmp_path / 'm.onnx'), str(tmp_path / 'm.pt')
    export_onnx(model, onnx_path, (3, SIZE, SIZE))
    export_torchscript(model, ts_path, (3, SIZE, SIZE))
    assert max(check_onnx(onnx_path, model, (3, SIZE, SIZE)).values()) < ATOL
    with torch.no_grad():
        model.classifier.bias.add_(0.01)
    with pytest.raises(ExportCheckError, match='differ'):
        check_onnx(onnx_path, model, (3, SIZE, SIZE))
    with pytest.raises(ExportCheckError, match='differ'):
        check_torchscript(ts_path, model, (3, SIZE, SIZE))


def test_cli_exports_both_formats_from_a_checkpoint(model, tmp_path, capsys):
    """srdl-export with a checkpoint and the config.json beside it (no --model: the config names the architecture)
    writes ONNX and TorchScript carrying the config's label names, reports the check, exits 0; without any output
    it is a usage error, and a missing checkpoint exits 2, each in one line."""
    ckpt = tmp_path / 'w.safetensors'
    save_file(model.state_dict(), str(ckpt))
    (tmp_path / 'config.json').write_text(json.dumps(dict(architecture='srdl_test_resnet', num_classes=3,
                                                          label_names=LABELS, model_args=model_args(model))))
    onnx_path, ts_path = tmp_path / 'out' / 'm.onnx', tmp_path / 'out' / 'm.pt'
    rc = main(['--checkpoint', str(ckpt), '--img-size', str(SIZE),
               '--onnx', str(onnx_path), '--torchscript', str(ts_path), '--check-batch-sizes', '1', '2'])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count('matches PyTorch') == 2 and '1x3x64x64' in out and '2x3x64x64' in out
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    x = torch.randn(3, 3, SIZE, SIZE)
    np.testing.assert_allclose(session.run(None, {'input': x.numpy()})[0], _reference(model, x), rtol=RTOL,
                               atol=ATOL)
    assert json.loads(session.get_modelmeta().custom_metadata_map['label_names']) == LABELS
    assert main(['--model', 'srdl_test_resnet', '--checkpoint', str(ckpt)]) == 2
    assert capsys.readouterr().err.strip() == ('srdl-export: error: nothing to do: give --onnx FILE and/or '
                                               '--torchscript FILE')
    assert main(['--model', 'srdl_test_resnet', '--checkpoint', str(tmp_path / 'missing.safetensors'),
                 '--onnx', str(onnx_path)]) == 2
    assert 'checkpoint not found' in capsys.readouterr().err


def test_export_metadata_says_how_to_post_process_with_the_thresholds(model, tmp_path, capsys):
    """Weights carrying per-class thresholds: the export's metadata holds them (label_thresholds, their info) and a
    postprocess note using them, and srdl-export prints that note; weights without any get the 0.5 note."""
    from srdl_timm.export import export_metadata
    plain = export_metadata(model, (3, SIZE, SIZE))
    assert 'label_thresholds' not in plain and '>= 0.5 (no per-class thresholds recorded)' in plain['postprocess']
    ckpt = tmp_path / 'w.safetensors'
    save_file(model.state_dict(), str(ckpt))
    (tmp_path / 'config.json').write_text(json.dumps(dict(
        architecture='srdl_test_resnet', num_classes=3, label_names=LABELS, model_args=model_args(model),
        label_thresholds=[0.2, 0.4, 0.6], label_thresholds_info={'rule': 'f1', 'tuned_on': {'split': 'val'}})))
    ts_path = tmp_path / 'm.pt'
    assert main(['--checkpoint', str(ckpt), '--img-size', str(SIZE), '--torchscript', str(ts_path),
                 '--no-check']) == 0
    out = capsys.readouterr().out
    assert 'post-processing (in the metadata): class c is present when sigmoid(logits[c]) >= label_thresholds[c]' \
        in out
    files = {'config.json': ''}
    torch.jit.load(str(ts_path), _extra_files=files)
    meta = json.loads(files['config.json'])
    assert json.loads(meta['label_thresholds']) == [0.2, 0.4, 0.6]
    assert json.loads(meta['label_thresholds_info'])['rule'] == 'f1'
    assert 'not from the SRDL paper' in meta['postprocess']


def test_prepare_for_export_is_idempotent_and_keeps_weights():
    """prepare_for_export only switches modes (eval, OE off, reference kernels): the weights are untouched."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepare_for_export(prepare_for_export(model)) is model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_missing_export_extra_is_an_input_error_naming_it(model, tmp_path, monkeypatch):
    """Without onnx (or onnxruntime) installed, exporting or checking ONNX says to install the ``export`` extra
    (an InputError: exit 2 with one line), not a bare ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, 'onnx', None)  # import onnx -> ImportError, as on an install without the extra
    with pytest.raises(InputError, match=r'ONNX export needs onnx: pip install "srdl-timm\[export\]"'):
        export_onnx(model, str(tmp_path / 'x.onnx'))
    with pytest.raises(InputError, match=r'needs onnx: pip install'):
        check_onnx(str(tmp_path / 'x.onnx'), model)
