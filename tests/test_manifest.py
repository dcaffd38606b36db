"""Tests of the weights manifest: writing it (srdl_timm/manifest.py: register_weights, verify_manifest,
manifest_markdown) and reading it (srdl_timm/models/pretrained.py: load_manifest validation, manifest_pretrained_cfgs,
sha256 verification), and manifest tags loading through timm in a fresh offline process.

Offline Hub and manifest-registry checks run in one subprocess (the ``offline_process`` fixture, which also loads an
``hf-hub:`` name from the offline cache it lays out), because HF_HUB_OFFLINE / SRDL_WEIGHTS_DIR must be set before
huggingface_hub / srdl_timm are imported.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_manifest.py
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm import hub
from srdl_timm.models.pretrained import manifest_pretrained_cfgs

from fixtures_data import (
    HUB_ENV as ENV, HUB_IMG as IMG, HUB_NAMES as NAMES, HUB_REPORT as REPORT, model_out as _out,
    populate_hub_cache as _populate_hub_cache, run_python as _run,
)

# Fixtures `source` (the toy SRDL model), `x` (an input batch) and `published` (source published with a report)
# come from tests/conftest.py; constants and helpers from tests/fixtures_data.py.


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
                  label_names_source='tests/fixtures_data.py HUB_NAMES', manifest=weights / 'manifest.json')
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
        res['hf-hub:thresholds'] = srdl_timm.labels.model_label_thresholds(m).to_json()
        res['hf-hub:5:thresholds'] = srdl_timm.labels.model_label_thresholds(m5)
        with torch.no_grad():
            outs.update({{'hf-hub': m(x).contiguous(), 'hf-hub:5': m5(x).contiguous(),
                          'hf-hub:5:conv1': m5.backbone.conv1[0].weight.contiguous()}})
        for name in ('srdl_test_resnet', 'srdl_test_resnet.shipped', 'srdl_test_resnet.hubbed'):
            m = timm.create_model(name, pretrained=True).eval()
            res[name] = [m.pretrained_cfg['tag'], m.embed_dim, m.graph_layers, m.use_ca, m.global_pool]
            res[name + ':thresholds'] = srdl_timm.labels.model_label_thresholds(m).to_json()
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


def test_decision_thresholds_travel_through_the_hub_and_the_manifest(offline_process, published):
    """The published folder's per-class thresholds (config.json label_thresholds + info) are carried by the model
    that timm.create_model('hf-hub:...', pretrained=True) builds and by every manifest tag registered from it (the
    entry records them); fine-tuning to 5 classes drops them."""
    from fixtures_data import HUB_THRESHOLDS
    res, _ = offline_process
    assert res['hf-hub:thresholds'] == HUB_THRESHOLDS and res['hf-hub:5:thresholds'] is None
    for name in ('srdl_test_resnet', 'srdl_test_resnet.shipped', 'srdl_test_resnet.hubbed'):
        assert res[name + ':thresholds'] == HUB_THRESHOLDS, name
    folder, _ = published
    entry = hub.register_weights(folder, tag='t', ship=False, hf_hub_id='srdl-test/x', dataset='toy-csv',
                                 recipe='r', metrics=REPORT, label_names_source='s',
                                 manifest=folder.parent / 'scratch' / 'manifest.json')
    assert {k: entry[k] for k in HUB_THRESHOLDS} == HUB_THRESHOLDS


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
    (lambda e: e.update(label_thresholds=[0.5, 0.5]), '"label_thresholds" holds 2 thresholds for 3 classes'),
    (lambda e: e.update(label_thresholds=[0.5, 2, 0.5]), 'strictly between 0 and 1'),
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
