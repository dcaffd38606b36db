"""Tests of srdl_timm/weight_files.py: the one weight-file reader (real safetensors and pickle files, damaged and
hostile ones), the one config reader (a published folder's config.json and a run's train_config.json with a field
corrupted, through srdl-predict, srdl_timm.loading.load_model and timm.create_model('local-dir:' / 'hf-hub:')),
and the one Hub download (an offline cache).

Run: OMP_NUM_THREADS=1 pytest -q tests/test_weight_files.py
"""
import argparse
import copy
import json
import os
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm.cli.predict import main as predict_main
from srdl_timm.errors import InputError
from srdl_timm.loading import load_model, model_args
from srdl_timm.weight_files import ModelLoadError, load_state_dict, read_config_json, read_weight_file

from fixtures_data import HUB_ENV as ENV, populate_hub_cache, run_python, write_image

# Fixtures `source` (the toy SRDL model, 3 classes) and `published` (source written by hub.save_pretrained_dir)
# come from tests/conftest.py.


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


# ----------------------------------------------------------------------------------------------------------------
# weight files
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'pickle_with_code', 'empty'])
def test_unreadable_weights_are_refused_naming_the_file(source, tmp_path, damage):
    """A truncated or garbage safetensors file, a pickle that needs more than weights_only=True, and an empty
    file each give one ModelLoadError naming the file; the pickle is never unpickled and the message never
    suggests weights_only=False."""
    good = tmp_path / 'good.safetensors'
    save_file(source.state_dict(), str(good))
    if damage == 'truncate':
        bad = tmp_path / 'model.safetensors'
        bad.write_bytes(good.read_bytes()[:1000])
    elif damage == 'garbage':
        bad = tmp_path / 'model.safetensors'
        bad.write_bytes(b'\x00' * 64)
    elif damage == 'empty':
        bad = tmp_path / 'model.pth'
        bad.write_bytes(b'')
    else:
        marker = tmp_path / 'executed'
        bad = tmp_path / 'pytorch_model.bin'
        torch.save({'state_dict': source.state_dict(), 'hook': _RunsCode(marker)}, bad)
        good.unlink()
    with pytest.raises(ModelLoadError) as info:
        load_state_dict(bad)
    message = str(info.value)
    assert str(bad) in message and 'weights_only=False' not in message and '\n' not in message
    if damage == 'pickle_with_code':
        assert 'pickle' in message and not marker.exists()
        with pytest.raises(ModelLoadError, match='pickle'):  # a folder holding only the pickle: same sentence
            load_model('srdl_test_resnet', tmp_path)


def test_timm_training_checkpoint_reads_with_its_args_and_only_the_asked_entries(source, tmp_path):
    """A timm train.py checkpoint ({'state_dict', 'state_dict_ema', 'args': argparse.Namespace}) reads with
    weights_only=True: read_weight_file keeps its args, load_state_dict takes 'state_dict' (not the EMA weights)
    with 'module.' prefixes removed; keys= reads only the named tensors of a safetensors file."""
    state = source.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    ckpt = tmp_path / 'last.pth.tar'
    torch.save({'epoch': 0, 'args': argparse.Namespace(model='srdl_test_resnet', num_classes=3),
                'state_dict': {'module.' + k: v for k, v in state.items()}, 'state_dict_ema': ema}, ckpt)
    assert read_weight_file(ckpt)['args'].model == 'srdl_test_resnet'
    loaded = load_state_dict(ckpt)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    flat = tmp_path / 'model.safetensors'
    save_file(state, str(flat))
    part = read_weight_file(flat, keys=('classifier.bias', 'no.such.tensor'))
    assert list(part) == ['classifier.bias'] and torch.equal(part['classifier.bias'], state['classifier.bias'])


# ----------------------------------------------------------------------------------------------------------------
# config.json / train_config.json
# ----------------------------------------------------------------------------------------------------------------
def _set(config, field, value):
    """A deep copy of ``config`` with the dotted ``field`` set to ``value`` (missing objects created)."""
    config = copy.deepcopy(config)
    parent = config
    keys = field.split('.')
    for key in keys[:-1]:
        parent = parent.setdefault(key, {})
    parent[keys[-1]] = value
    return config


def _corrupt(folder, into, field, value, name='config.json'):
    """A copy of ``folder`` at ``into`` whose ``name`` has the dotted ``field`` set to ``value``."""
    shutil.copytree(folder, into)
    config = json.loads((into / name).read_text())
    (into / name).write_text(json.dumps(_set(config, field, value)))
    return into


# (field, bad value) of a published config.json: a value of the wrong type, out of range, or contradicting another
# field; every one reaches timm's local-dir: loader, so all three entry points are checked
CORRUPTIONS = [
    ('pretrained_cfg.input_size', ['a', 64, 64]),
    ('pretrained_cfg.input_size', [3, 64]),
    ('num_classes', 'ten'),
    ('num_classes', 5),
    ('model_args.num_classes', 'ten'),
    ('model_args.embed_dim', '8'),
    ('model_args.use_ca', 'no'),
    ('model_args.oe_alpha', 'half'),
    ('pretrained_cfg.mean', [0.5, 'x', 0.5]),
    ('pretrained_cfg.std', [0.5, 0, 0.5]),
    ('pretrained_cfg.interpolation', 'cubicle'),
    ('pretrained_cfg.crop_pct', 'x'),
    ('pretrained_cfg.crop_mode', 'sqaush'),
    ('label_names', ['cat', 'dog']),
    ('label_names', 'cat dog'),
    ('label_thresholds', [0.5, 0.5]),
    ('label_thresholds', [0.5, 1.5, 0.5]),
    ('label_thresholds_info', [1]),
]
#: corruptions timm's own config parser trips over before any srdl_timm code runs (timm.create_model('local-dir:')
#: then raises timm's error): checked through srdl-predict and load_model only
BEFORE_TIMM_REACHES_US = [
    ('pretrained_cfg.input_size', 64),
    ('model_args', [1]),
    ('architecture', 5),
]


def _predict_fails_in_one_line(folder, tmp_path, capsys, words):
    image = write_image(tmp_path / 'photo.png')
    assert predict_main([image, '--model', f'local-dir:{folder}', '--workers', '0', '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


@pytest.mark.parametrize('field,value', CORRUPTIONS, ids=[f'{f}={json.dumps(v)}' for f, v in CORRUPTIONS])
def test_a_corrupted_config_field_is_one_line_naming_file_and_field(published, tmp_path, capsys, field, value):
    """A published folder whose config.json has one field of the wrong type or value ends srdl-predict with exit
    status 2 and one line naming config.json and the field, and load_model and timm.create_model('local-dir:...',
    pretrained=True) raise an InputError saying the same (never a bare ValueError/TypeError from deeper down)."""
    folder = _corrupt(published[0], tmp_path / 'corrupt', field, value)
    words = (str(folder / 'config.json'), f'"{field}"')
    _predict_fails_in_one_line(folder, tmp_path, capsys, words)
    for load in (lambda: load_model(f'local-dir:{folder}'),
                 lambda: timm.create_model(f'local-dir:{folder}', pretrained=True)):
        with pytest.raises(InputError) as info:
            load()
        message = str(info.value)
        assert '\n' not in message and all(w in message for w in words), message


@pytest.mark.parametrize('field,value', BEFORE_TIMM_REACHES_US,
                         ids=[f'{f}={json.dumps(v)}' for f, v in BEFORE_TIMM_REACHES_US])
def test_config_fields_timm_cannot_parse_are_one_line_in_our_loader(published, tmp_path, capsys, field, value):
    """config.json fields so malformed that timm's own parser fails on them still end srdl-predict with exit 2 and
    one line, and load_model with a ModelLoadError, naming config.json and the field."""
    folder = _corrupt(published[0], tmp_path / 'corrupt', field, value)
    words = (str(folder / 'config.json'), f'"{field}"')
    _predict_fails_in_one_line(folder, tmp_path, capsys, words)
    with pytest.raises(ModelLoadError) as info:
        load_model(f'local-dir:{folder}')
    assert all(w in str(info.value) for w in words), info.value


def test_config_num_classes_contradicting_the_weights_names_both(published, tmp_path, capsys):
    """A config.json that says 5 classes throughout, beside 3-class weights, is an error naming the weights file
    with its 3 classes and the config with its 5, from srdl-predict (exit 2), load_model and timm's local-dir:
    loader (which would otherwise re-initialise the classifier at random)."""
    folder = _corrupt(published[0], tmp_path / 'corrupt', 'model_args.num_classes', 5)
    config = json.loads((folder / 'config.json').read_text())
    config.update(num_classes=5, label_names=None, label_thresholds=None)  # consistent in itself
    (folder / 'config.json').write_text(json.dumps(config))
    expected = (f'{folder / "model.safetensors"} holds weights for 3 classes (classifier.bias) but the model was '
                f'asked for 5 by {folder / "config.json"}')
    _predict_fails_in_one_line(folder, tmp_path, capsys, [expected])
    for load in (lambda: load_model(f'local-dir:{folder}'),
                 lambda: timm.create_model(f'local-dir:{folder}', pretrained=True)):
        with pytest.raises(ModelLoadError) as info:
            load()
        assert expected in str(info.value)


def test_train_config_fields_are_checked(source, tmp_path):
    """A run folder's train_config.json with a non-number in data_config.input_size, a string node width in
    model_kwargs, a top-level flag of the wrong type or a model_args class count other than the top-level one is an
    error naming train_config.json and the field; the intact file loads."""
    run = tmp_path / 'run'
    run.mkdir()
    save_file(source.state_dict(), str(run / 'model.safetensors'))
    good = dict(model='srdl_test_resnet', num_classes=3, use_gcn=True, label_names=source.label_names,
                model_args=model_args(source), data_config={'input_size': [3, 64, 64], 'mean': [0.5] * 3})
    (run / 'train_config.json').write_text(json.dumps(good))
    assert load_model(None, run).num_classes == 3
    for i, (field, value) in enumerate((('data_config.input_size', [3, '64', 64]), ('model_kwargs.embed_dim', 'eight'),
                                        ('use_gcn', 'yes'), ('model_args.num_classes', 4))):
        bad = _corrupt(run, tmp_path / str(i), field, value, name='train_config.json')
        with pytest.raises(ModelLoadError) as info:
            load_model(None, bad)
        assert str(bad / 'train_config.json') in str(info.value) and f'"{field}"' in str(info.value), info.value


def test_read_config_json_refuses_what_is_not_a_config(tmp_path):
    """A missing file, invalid JSON, a JSON list and a config naming no model are each one error naming the file."""
    file = tmp_path / 'config.json'
    with pytest.raises(ModelLoadError, match='config.json not found'):
        read_config_json(file)
    for text, words in (('{"architecture": ', 'is not valid JSON'), ('[1, 2]', 'must hold a JSON object'),
                        ('{"num_classes": 3}', 'names no model'), ('{"architecture": 5}', '"architecture" is 5')):
        file.write_text(text)
        with pytest.raises(ModelLoadError, match=words) as info:
            read_config_json(file)
        assert str(file) in str(info.value)


def test_hf_hub_config_is_checked_and_a_missing_repo_names_offline_mode(published, tmp_path):
    """With HF_HUB_OFFLINE=1 and a cache laid out like the Hub's: a repo whose config.json has a non-number in
    pretrained_cfg.input_size fails through load_model('hf-hub:...') and timm.create_model('hf-hub:...',
    pretrained=True) alike, naming the cached config.json and the field; a repo that is not cached names the repo,
    the file and offline mode."""
    cache = tmp_path / 'hf-cache'
    bad = _corrupt(published[0], tmp_path / 'corrupt', 'pretrained_cfg.input_size', [3, 'x', 64])
    populate_hub_cache(cache, 'srdl-test/bad', bad, 'c' * 40)
    proc = run_python('''
        import json, timm
        import srdl_timm
        from srdl_timm.errors import InputError
        from srdl_timm.loading import load_model
        out = {}
        for name, load in (('load_model', lambda: load_model('hf-hub:srdl-test/bad')),
                           ('timm', lambda: timm.create_model('hf-hub:srdl-test/bad', pretrained=True)),
                           ('missing', lambda: load_model('hf-hub:srdl-test/not-cached'))):
            try:
                load()
                out[name] = 'loaded'
            except InputError as e:
                out[name] = str(e)
        print('RESULT' + json.dumps(out))
    ''', dict(ENV, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'home')), timeout=300)
    out = json.loads(proc.stdout.split('RESULT', 1)[1])
    for name in ('load_model', 'timm'):
        message = out[name]
        assert 'snapshots' in message and 'config.json: "pretrained_cfg.input_size" is [3, "x", 64]' in message
    message = out['missing']
    assert 'config.json of hf-hub:srdl-test/not-cached' in message and 'HF_HUB_OFFLINE=1' in message
