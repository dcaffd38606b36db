"""Tests of srdl_timm/hub.py (publishing): the published folder (timm layout, safetensors only, config.json whose
model_args rebuild the exact model), refusals before anything is written or uploaded, and the folder loading back
through timm (local-dir:, pretrained_cfg_overlay=file, another num_classes).

Tiny real models (srdl_test_resnet, 64 px, 3 classes), real files throughout. Pushing to the Hub needs network access
and is not tested here. Model cards: tests/test_model_card.py; the weights manifest: tests/test_manifest.py;
srdl-publish: tests/test_cli_publish.py.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_hub.py
"""
import json
import shutil

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm import hub
from srdl_timm.models.srdl import CLASS_DEPENDENT_KEYS

from fixtures_data import HUB_HPARAMS as HPARAMS, HUB_IMG as IMG, HUB_NAMES as NAMES, model_out as _out

# Fixtures `source` (the toy SRDL model), `x` (an input batch) and `published` (source published with a report)
# come from tests/conftest.py; constants and helpers from tests/fixtures_data.py.


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
                    'use_sa': True, 'attention': 'paper', 'oe_erase': 'attention', 'graph_kind': 'dense',
                    'graph_neighbors': 16}
    rebuilt = timm.create_model(config['architecture'], **args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in source.state_dict().items()}
    for attr in ('backbone_name', 'embed_dim', 'graph_layers', 'use_gcn', 'use_ca', 'use_sa', 'attention_impl',
                 'global_pool', 'num_classes', 'in_chans'):
        assert getattr(rebuilt, attr) == getattr(source, attr), attr
    assert (rebuilt.object_eraser.topk, rebuilt.object_eraser.alpha) == (2, 0.3)


def test_decision_thresholds_are_published_at_the_top_level_and_load_back(published, source, tmp_path):
    """The model's per-class thresholds go to config.json's top level (label_thresholds + label_thresholds_info),
    not into pretrained_cfg, which timm rebuilds as a PretrainedCfg; timm.create_model('local-dir:...') and
    load_model carry them back; a config.json with a bad threshold is refused naming the file and the field."""
    from fixtures_data import HUB_THRESHOLDS
    from srdl_timm.labels import model_label_thresholds
    from srdl_timm.loading import load_model
    from srdl_timm.weight_files import ModelLoadError
    folder, _ = published
    config = json.loads((folder / 'config.json').read_text())
    assert {k: config[k] for k in HUB_THRESHOLDS} == HUB_THRESHOLDS
    assert not any(k.startswith('label_thresholds') for k in config['pretrained_cfg'])
    timm.models.PretrainedCfg(**{k: v for k, v in config['pretrained_cfg'].items()})  # timm accepts every key
    for model in (timm.create_model(f'local-dir:{folder}', pretrained=True), load_model(f'local-dir:{folder}')):
        assert model_label_thresholds(model).to_json() == HUB_THRESHOLDS
    broken = tmp_path / 'broken'
    shutil.copytree(folder, broken)
    config['label_thresholds'] = [0.5, 0.0, 0.5]
    (broken / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match='"label_thresholds" must be a list of probabilities') as e:
        timm.create_model(f'local-dir:{broken}', pretrained=True)
    assert str(broken / 'config.json') in str(e.value)


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
