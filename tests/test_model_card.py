"""Tests of srdl_timm/model_card.py: the README.md of a published folder (Hub front matter, label names, evaluation
protocol, BibTeX, model-index for a Hub dataset), its usage snippet run as written (local-dir: and hf-hub: from an
offline Hugging Face cache the test lays out), and metrics without their protocol refused.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_model_card.py
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

import srdl_timm  # noqa: F401  registers the SRDL architectures
from srdl_timm import hub

from fixtures_data import (
    HUB_ENV as ENV, HUB_NAMES as NAMES, HUB_REPORT as REPORT, perturb as _perturb,
    populate_hub_cache as _populate_hub_cache,
)

# Fixtures `source` (the toy SRDL model), `x` (an input batch) and `published` (source published with a report)
# come from tests/conftest.py; constants and helpers from tests/fixtures_data.py.


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


def test_card_states_the_decision_thresholds_and_its_snippet_uses_them(published, tmp_path):
    """The card of weights with per-class thresholds lists each class's threshold, marks a class kept at 0.5,
    says where and by which rule they were tuned and that they are not the paper's; its usage snippet prints the
    classes at or above their own threshold (not above 0.5). Without thresholds the card says 0.5 is used."""
    folder, _ = published
    body = (folder / 'README.md').read_text().split('## Decision thresholds', 1)[1].split('\n## ', 1)[0]
    assert 'They were chosen on csv split `val` (12 images): per class, the probability threshold with the best F1' \
        in body and 'They are not from the paper' in body
    assert '| cat | 0.2500 |' in body and '| dog | 0.5000 (no positive to tune on: 0.5) |' in body
    assert '| traffic light | 0.7500 |' in body and '`srdl-predict` uses them by default' in body

    torch.manual_seed(3)
    model = _perturb(timm.create_model('srdl_test_resnet', num_classes=3, label_embeddings=torch.randn(3, 16)), 7)
    from PIL import Image
    work = tmp_path / 'work'
    work.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(work / 'image.jpg')
    hub.save_pretrained_dir(model, tmp_path / 'plain')
    assert 'No per-class thresholds were recorded' in (tmp_path / 'plain' / 'README.md').read_text()
    config = timm.data.resolve_model_data_config(model)
    with torch.no_grad():
        probs = model.eval()(timm.data.create_transform(**config, is_training=False)(
            Image.open(work / 'image.jpg').convert('RGB')).unsqueeze(0)).sigmoid()[0]
    # classes 0 and 2 kept whatever their score; class 1 decided the other way round than at 0.5
    thresholds = [max(0.001, p.item() - 0.05) for p in probs]
    if probs[1] >= 0.5:
        thresholds[1] = min(0.999, probs[1].item() + 0.05)
    from srdl_timm.labels import store_label_thresholds
    store_label_thresholds(model, thresholds)
    hub.save_pretrained_dir(model, tmp_path / 'tuned')
    expected = [[str(i), round(p.item(), 3)] for i, p in enumerate(probs) if p >= thresholds[i]]
    assert expected and expected != _expected_positives(model, work / 'image.jpg', ['0', '1', '2'])
    assert _run_snippet(_card_snippet(tmp_path / 'tuned'), work, ENV) == expected


def test_metrics_without_protocol_are_refused(source, tmp_path):
    """Metric values without the AP definition, split and input size they were measured with are refused."""
    with pytest.raises(ValueError, match='ap_definitions or ap_definition, split, input_size'):
        hub.save_pretrained_dir(source, tmp_path / 'x', metrics={'mAP_interpolated': 50.0})
