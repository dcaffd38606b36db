"""Tests of srdl_timm/validate.py and srdl_timm/cli/validate.py (srdl-validate), create_multilabel_loader
(data/factory.py) and the evaluation sampler and gather of srdl_timm/data/samplers.py, end to end on tiny real
datasets with a stock timm model (resnet10t, 64 px).

Run: OMP_NUM_THREADS=1 pytest -q tests/test_validate.py
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.metrics import average_precision_score, precision_score, recall_score
from timm.data import resolve_data_config

from fixtures_data import write_coco_json, write_corrupt_image, write_csv, write_voc
from srdl_timm.cli.validate import main
from srdl_timm.data import (
    VOC_CLASSES, DistributedEvalSampler, create_multilabel_dataset, create_multilabel_loader, create_paper_transform)
from srdl_timm.loading import ModelSpec
from srdl_timm.validate import class_index_by_name, evaluate_dataset, format_rows, validate

IMG = 64


def _model(num_classes, seed=0):
    torch.manual_seed(seed)
    return timm.create_model('resnet10t', num_classes=num_classes).eval()


def _checkpoint(path, model):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def coco_json(tmp_path_factory):
    root = tmp_path_factory.mktemp('cj')
    info = write_coco_json(root, 'val', num_images=9, categories=('cat', 'dog', 'zebra'), seed=11, max_labels=2)
    assert (info['targets'].sum(0) > 0).all(), 'every class needs a positive'
    return root, info


def _eval_dataset(root, model):
    cfg = resolve_data_config({}, model=model)
    return create_multilabel_dataset('coco-json', str(root), 'val',
                                     transform=create_paper_transform(cfg, False, size=IMG))


def test_validate_matches_an_independent_computation(coco_json):
    """validate() over uneven batches equals AP/precision/recall computed with scikit-learn from a plain loop of
    model(image) over the dataset."""
    root, info = coco_json
    model = _model(3)
    ds = _eval_dataset(root, model)
    r = validate(model, create_multilabel_loader(ds, 4, is_training=False, num_workers=0), torch.device('cpu'),
                 progress=False, label_names=ds.label_names)
    with torch.no_grad():
        logits = torch.cat([model(ds[i][0][None]) for i in range(len(ds))]).numpy()
    t = ds.targets
    assert len(np.unique(logits, axis=0)) == len(ds)
    ref_ap = [average_precision_score(t[:, c], logits[:, c]) * 100 for c in range(3)]
    np.testing.assert_allclose(r['AP_non_interpolated'], ref_ap, atol=1e-4)
    assert r['mAP_non_interpolated'] == pytest.approx(np.mean(ref_ap), abs=1e-4)
    assert r['mAP_interpolated'] >= r['mAP_non_interpolated'] - 1e-9
    pred = logits >= 0
    assert r['CP'] == pytest.approx(100 * precision_score(t, pred, average='macro', zero_division=0), abs=1e-4)
    assert r['OR'] == pytest.approx(100 * recall_score(t, pred, average='micro', zero_division=0), abs=1e-4)
    assert r['num_samples'] == len(ds) == 9


def test_class_index_reorders_logits_and_mismatched_names_raise(coco_json):
    """class_index picks logits columns in dataset order (per-class AP follows the names); label names that do not
    match the dataset raise ValueError."""
    root, _ = coco_json
    model = _model(3)
    ds = _eval_dataset(root, model)
    loader = create_multilabel_loader(ds, 5, is_training=False, num_workers=0)
    a = validate(model, loader, torch.device('cpu'), progress=False)
    b = validate(model, loader, torch.device('cpu'), progress=False, class_index=[2, 1, 0])
    assert a['AP_interpolated'][0] != b['AP_interpolated'][0]
    model.pretrained_cfg = dict(model.pretrained_cfg, label_names=['zebra', 'dog', 'cat'])
    assert class_index_by_name(model, ['cat', 'dog', 'zebra']) == [2, 1, 0]
    assert class_index_by_name(model, ['zebra', 'dog', 'cat']) is None
    with pytest.raises(ValueError, match=r"dataset classes the weights do not know: \['horse'\]"):
        class_index_by_name(model, ['cat', 'dog', 'horse'])


def test_amp_keeps_a_float32_head_and_channels_last_runs(coco_json):
    """With bf16 autocast, timm models run forward_head in float32 (head_dtype recorded); a model without
    forward_head falls back to autocast logits; channels_last gives the same numbers as contiguous."""
    root, _ = coco_json
    model = _model(3)
    ds = torch.utils.data.Subset(_eval_dataset(root, model), range(4))  # bf16 on CPU is slow: 4 images
    loader = create_multilabel_loader(ds, 3, is_training=False, num_workers=0)
    cpu = torch.device('cpu')
    amp = validate(model, loader, cpu, amp_dtype=torch.bfloat16, progress=False)
    assert amp['head_dtype'] == 'float32' and amp['num_samples'] == 4
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    assert validate(plain, loader, cpu, amp_dtype=torch.bfloat16, progress=False)['head_dtype'] == 'bfloat16'
    a = validate(model, loader, cpu, progress=False)
    b = validate(model, loader, cpu, channels_last=True, progress=False)
    assert a['mAP_interpolated'] == pytest.approx(b['mAP_interpolated'], abs=1e-6)


def test_evaluate_dataset_is_the_report_without_printing(tmp_path, coco_json, capsys):
    """evaluate_dataset, the library behind srdl-validate, prints and writes nothing; its metrics equal validate()
    on the same data, its one row names the checkpoint, the split and the image count, and the report records the
    spec (checkpoint and sha256, model kwargs, not pretrained)."""
    root, info = coco_json
    model = _model(3, seed=5)
    ckpt = _checkpoint(tmp_path / 'w.safetensors', model)
    spec = ModelSpec(model='resnet10t', checkpoint=ckpt, model_kwargs={'drop_rate': 0.0})
    ev = evaluate_dataset(spec, 'coco-json', str(root), img_size=IMG, batch_size=4, workers=0)
    assert capsys.readouterr() == ('', '') and not (tmp_path / 'val.json').exists()
    direct = validate(model, create_multilabel_loader(_eval_dataset(root, model), 4, is_training=False, num_workers=0),
                      torch.device('cpu'), progress=False)
    assert ev.rank == 0 and ev.report['metrics']['mAP_interpolated'] == pytest.approx(direct['mAP_interpolated'])
    assert [title for title, _ in ev.rows] == [f'resnet10t coco-json/val ({len(info["targets"])} images)']
    assert ev.report['checkpoint'] == dict(path=os.path.abspath(ckpt),
                                           sha256=hashlib.sha256(open(ckpt, 'rb').read()).hexdigest())
    assert ev.report['model_kwargs'] == {'drop_rate': 0.0} and ev.report['pretrained'] is False
    assert ev.report['protocol']['split'] == 'val' and 'resnet10t coco-json/val' in format_rows(ev.rows)


def test_cli_voc_checkpoint_report(tmp_path, capsys):
    """srdl-validate on VOC with a local safetensors checkpoint: the classifier is loaded (same numbers as the
    in-memory model), the main metrics ignore difficult-only entries, a second named row and JSON entry count
    them negative (equal to scikit-learn's AP with those entries set to 0), and the JSON holds per-class AP by VOC
    name, the checkpoint's sha256 and the protocol."""
    voc = write_voc(tmp_path / 'voc', {'test': 6}, seed=8)
    model = _model(20, seed=3)
    ckpt = _checkpoint(tmp_path / 'w.safetensors', model)
    out = tmp_path / 'res' / 'voc.json'
    assert main(['--model', 'resnet10t', '--checkpoint', ckpt, '--data', 'voc', '--root', str(tmp_path / 'voc'),
                 '--img-size', str(IMG), '--batch-size', '4', '--workers', '0', '--no-progress',
                 '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'mAP(interp)' in printed and 'OF1@top3' in printed and 'voc/test (6 images)' in printed
    rep = json.loads(out.read_text())
    assert rep['checkpoint']['sha256'] == hashlib.sha256(open(ckpt, 'rb').read()).hexdigest()
    assert list(rep['per_class_AP']['interpolated']) == list(VOC_CLASSES)
    p = rep['protocol']
    assert p['difficult_policy'] == 'ignore' and p['ignored_entries'] == int((voc['ternary']['test'] == -1).sum())
    assert p['num_images'] == p['num_images_evaluated'] == 6 and p['split'] == 'test'
    assert p['input_size'] == [3, IMG, IMG] and p['interpolation'] == 'bicubic' and len(p['mean']) == 3
    assert set(p['ap_definitions']) >= {'mAP_interpolated', 'mAP_non_interpolated'}
    transform = create_paper_transform(resolve_data_config({}, model=model), False, size=IMG)
    ds = create_multilabel_dataset('voc', str(tmp_path / 'voc'), 'test', difficult='ignore', transform=transform)
    direct = validate(model, create_multilabel_loader(ds, 6, False, num_workers=0), torch.device('cpu'), progress=False)
    assert rep['metrics']['mAP_interpolated'] == pytest.approx(direct['mAP_interpolated'], abs=1e-6)
    assert rep['metrics']['OF1_top3'] == pytest.approx(direct['OF1_top3'], abs=1e-6)
    # both VOC conventions, named in the printed rows and the JSON
    assert 'difficult=ignore: difficult-only entries ignored (standard' in printed
    assert "difficult=negative: difficult-only entries counted negative (the authors' lab convention)" in printed
    both = rep['metrics_by_difficult_policy']
    assert both['ignore']['metrics']['mAP_interpolated'] == rep['metrics']['mAP_interpolated']
    with torch.no_grad():
        logits = torch.cat([model(ds[i][0][None]) for i in range(len(ds))]).numpy()
    tern = voc['ternary']['test'].astype(np.float32)
    assert (tern == -1).any(), 'the fixture must have difficult-only entries'
    negative = np.where(tern == -1, 0.0, tern)
    aps = [average_precision_score(negative[:, c], logits[:, c]) * 100 for c in range(20) if negative[:, c].any()]
    assert both['negative']['metrics']['mAP_non_interpolated'] == pytest.approx(np.mean(aps), abs=1e-4)
    assert both['negative']['metrics']['num_ignored_entries'] == 0
    assert both['ignore']['metrics']['num_ignored_entries'] == int((tern == -1).sum())


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, coco_json):
    """Under torchrun (2 CPU processes, gloo) with 9 images and batch 2, every image is evaluated exactly once and
    the metrics equal the single-process run."""
    root, _ = coco_json
    ckpt = _checkpoint(tmp_path / 'w.safetensors', _model(3, seed=5))
    common = ['--model', 'resnet10t', '--checkpoint', ckpt, '--data', 'coco-json', '--root', str(root),
              '--img-size', str(IMG), '--batch-size', '2', '--workers', '0', '--no-progress']
    one, two = tmp_path / 'one.json', tmp_path / 'two.json'
    assert main(common + ['--output', str(one)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           '-m', 'srdl_timm.cli.validate', *common, '--output', str(two)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert r2['protocol']['world_size'] == 2 and r1['protocol']['world_size'] == 1
    assert r2['protocol']['num_images_evaluated'] == r2['metrics']['num_samples'] == 9
    for k, v in r1['metrics'].items():
        assert r2['metrics'][k] == pytest.approx(v, abs=1e-6), k
    for mode in ('interpolated', 'non_interpolated'):
        for name, v in r1['per_class_AP'][mode].items():
            assert r2['per_class_AP'][mode][name] == pytest.approx(v, abs=1e-6)
    assert proc.stdout.count('wrote ') == 1  # only rank 0 prints and writes


def test_cli_unreadable_images_error_or_are_skipped_and_counted(tmp_path, capsys):
    """A corrupt image stops srdl-validate with exit 2 and a line naming it and --on-corrupt skip; with
    --on-corrupt skip it is counted in the report and the other images are still evaluated."""
    info = write_csv(tmp_path, 'val', num_images=5, seed=9)
    write_corrupt_image(os.path.join(str(tmp_path), info['rows'][1][0]), 'truncated')
    args = ['--model', 'resnet10t', '--random-init', '--data', 'csv', '--root', str(tmp_path), '--img-size',
            str(IMG), '--batch-size', '2', '--workers', '0', '--quiet']
    assert main(args) == 2
    err = capsys.readouterr().err
    assert 'val_001.jpg: corrupt or truncated image' in err and '--on-corrupt skip' in err, err
    out = tmp_path / 'r.json'
    assert main(args + ['--on-corrupt', 'skip', '--output', str(out)]) == 0
    p = json.loads(out.read_text())['protocol']
    assert p['num_images_unreadable_skipped'] == 1 and p['num_images_evaluated'] == 4 and p['num_images'] == 5


def test_cli_row_gives_the_evaluated_count_and_the_skipped_unreadable_images(tmp_path, capsys):
    """With --on-corrupt skip the printed row states the images actually evaluated (dataset minus the unreadable
    ones) and how many unreadable ones were skipped; a row whose labels are all -1 in the data is evaluated, not
    counted as unreadable; without skips the row keeps its plain image count."""
    info = write_csv(tmp_path, 'val', num_images=6, seed=9, layout='wide')
    write_corrupt_image(os.path.join(str(tmp_path), info['rows'][1][0]), 'truncated')
    lines = (tmp_path / 'val.csv').read_text().splitlines()
    lines[3] = info['rows'][2][0] + ',-1' * len(info['label_names'])  # a readable image, every label ignored
    (tmp_path / 'val.csv').write_text('\n'.join(lines) + '\n')
    args = ['--model', 'resnet10t', '--random-init', '--data', 'csv', '--root', str(tmp_path), '--img-size',
            str(IMG), '--batch-size', '4', '--workers', '0', '--quiet', '--keep-empty',
            '--output', str(tmp_path / 'r.json')]
    assert main(args + ['--on-corrupt', 'skip']) == 0
    out = capsys.readouterr().out
    assert 'csv/val (5 images evaluated, 1 unreadable skipped)' in out and '(6 images' not in out, out
    p = json.loads((tmp_path / 'r.json').read_text())['protocol']
    assert (p['num_images'], p['num_images_evaluated'], p['num_images_unreadable_skipped']) == (6, 5, 1)
    lines.pop(2)  # the unreadable image's row
    (tmp_path / 'val.csv').write_text('\n'.join(lines) + '\n')
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'csv/val (5 images)' in out and 'skipped' not in out, out


def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, coco_json, capsys):
    """A missing checkpoint, a classifier size that does not match the dataset, malformed --model-kwargs and no
    weights at all give one 'srdl-validate: error:' line naming the flag or file, exit 2."""
    root, _ = coco_json
    base = ['--model', 'resnet10t', '--data', 'coco-json', '--root', str(root), '--img-size', str(IMG),
            '--workers', '0', '--quiet']
    cases = [
        (['--checkpoint', str(tmp_path / 'nope.safetensors')], f'checkpoint not found: {tmp_path}'),
        (['--random-init', '--num-classes', '5'], 'have 5 classes but'),
        (['--random-init', '--model-kwargs', 'drop_rate'], "key=value, got 'drop_rate'"),
        (['--checkpoint', str(tmp_path / 'nope.safetensors'), '--random-init'], '--random-init and --checkpoint'),
    ]
    for extra, words in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith('srdl-validate: error: ') and words in err and 'Traceback' not in err, err


def test_eval_loader_never_drops_and_distributed_slices_partition():
    """Evaluation loaders refuse drop_last; DistributedEvalSampler slices are disjoint, unpadded and cover every
    index once; training loaders shuffle reproducibly from the seed and drop the last batch by default."""
    data = list(range(11))
    with pytest.raises(ValueError, match='drop_last'):
        create_multilabel_loader(data, 4, is_training=False, num_workers=0, drop_last=True)
    assert sum(len(b) for b in create_multilabel_loader(data, 4, is_training=False, num_workers=0)) == 11
    for world in (2, 3, 4, 12):
        parts = [list(DistributedEvalSampler(data, num_replicas=world, rank=r)) for r in range(world)]
        assert sum(parts, []) == data and max(map(len, parts)) - min(map(len, parts)) <= 1
    a = [b.tolist() for b in create_multilabel_loader(data, 4, is_training=True, num_workers=0, seed=3)]
    b = [b.tolist() for b in create_multilabel_loader(data, 4, is_training=True, num_workers=0, seed=3)]
    c = [b.tolist() for b in create_multilabel_loader(data, 4, is_training=True, num_workers=0, seed=4)]
    assert a == b and a != c and len(a) == 2 and sum(a, []) != sorted(sum(a, []))
    with pytest.raises(ValueError, match='not initialised'):
        create_multilabel_loader(data, 4, is_training=False, num_workers=0, distributed=True)


def test_cli_csv_without_classes_txt_takes_the_weights_label_set(tmp_path, capsys):
    """A list-layout CSV without classes.txt is evaluated on the label set of named weights (a published folder):
    a CSV holding only some of the weights' labels evaluates all the weights' classes (the absent one has no AP),
    and a label the weights do not know stops with one line naming the CSV line and the label, exit 2 -- not a
    class-count mismatch."""
    from fixtures_data import HUB_NAMES, toy_srdl_model
    from srdl_timm import hub
    folder = tmp_path / 'published'
    hub.save_pretrained_dir(toy_srdl_model(), folder)
    data = tmp_path / 'data'
    info = write_csv(data, 'val', num_images=5, label_names=tuple(HUB_NAMES[:2]), seed=3)
    args = ['--model', f'local-dir:{folder}', '--data', 'csv', '--root', str(data), '--img-size', str(IMG),
            '--workers', '0', '--quiet', '--output', str(tmp_path / 'r.json')]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['label_names'] == HUB_NAMES
    ap = report['per_class_AP']['interpolated']
    assert ap[HUB_NAMES[2]] is None and all(ap[n] is not None for n in HUB_NAMES[:2]), ap  # no positive: no AP
    lines = (data / 'val.csv').read_text().splitlines()
    lines[2] = info['rows'][1][0] + ',' + 'unicorn'
    (data / 'val.csv').write_text('\n'.join(lines) + '\n')
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('srdl-validate: error: ') and 'val.csv, line 3' in err and 'unicorn' in err, err
    assert 'classes but' not in err and 'Traceback' not in err, err


def test_cli_thresholds_are_tuned_on_one_split_and_reported_on_another(tmp_path, capsys):
    """--tune-thresholds FILE on val writes per-class thresholds (best F1 per class, where they were tuned) without
    reporting metrics at them; --thresholds FILE on test adds CP ... OF1 at them (those of
    srdl_timm.metrics.precision_recall_f1 at the per-class cut) to the 0.5 ones and a printed row; on val, where they
    were tuned, it is refused (exit 2, naming the split); from-weights needs weights that carry thresholds; the
    report counts the entries not annotated."""
    from srdl_timm.metrics import precision_recall_f1
    write_csv(tmp_path, 'val', num_images=8, seed=2, classes_txt=True, num_ignore=2)
    write_csv(tmp_path, 'test', num_images=8, seed=3, classes_txt=True)
    base = ['--model', 'resnet10t', '--random-init', '--data', 'csv', '--root', str(tmp_path), '--img-size', str(IMG),
            '--workers', '0', '--quiet']
    assert main(base + ['--split', 'val', '--tune-thresholds', str(tmp_path / 'th.json'),
                        '--output', str(tmp_path / 'val.json')]) == 0
    out = capsys.readouterr().out
    assert 'wrote' in out and 'not evaluated on this split' in out and 'per-class thresholds (' not in out
    doc = json.loads((tmp_path / 'th.json').read_text())
    assert len(doc['label_thresholds']) == 3 and doc['label_names'] == ['cat', 'dog', 'traffic light']
    assert doc['label_thresholds_info']['tuned_on']['split'] == 'val'
    report = json.loads((tmp_path / 'val.json').read_text())
    assert 'metrics_at_thresholds' not in report and report['tuned_thresholds']['file'] == str(tmp_path / 'th.json')
    assert report['protocol']['unknown_entries'] == 2 and '[2 entries not annotated]' in out

    assert main(base + ['--split', 'test', '--thresholds', str(tmp_path / 'th.json'),
                        '--output', str(tmp_path / 'test.json')]) == 0
    out = capsys.readouterr().out
    assert 'at per-class thresholds' in out and 'tuned on csv split \'val\' (8 images)' in out
    report = json.loads((tmp_path / 'test.json').read_text())
    at, plain = report['metrics_at_thresholds'], report['metrics']
    assert plain['threshold'] == 0.5 and at['threshold'] == doc['label_thresholds']
    torch.manual_seed(0)
    model = timm.create_model('resnet10t', num_classes=3).eval()
    ds = create_multilabel_dataset('csv', str(tmp_path), 'test')
    ds.transform = create_paper_transform(dict(resolve_data_config({}, model=model), input_size=(3, IMG, IMG)),
                                          is_training=False)
    outputs = validate(model, create_multilabel_loader(ds, 8, is_training=False, num_workers=0), torch.device('cpu'),
                       progress=False, return_outputs=True)
    expected = precision_recall_f1(torch.sigmoid(torch.as_tensor(outputs['logits'])).numpy()
                                   >= np.array(doc['label_thresholds']), outputs['targets'])
    for key, value in expected.items():
        assert at[key] == pytest.approx(value * 100), key
    assert report['thresholds']['per_class'] == dict(zip(['cat', 'dog', 'traffic light'], doc['label_thresholds']))

    assert main(base + ['--split', 'val', '--thresholds', str(tmp_path / 'th.json')]) == 2
    err = capsys.readouterr().err
    assert "they were tuned on csv split 'val' (8 images), the split evaluated here" in err
    assert main(base + ['--split', 'test', '--thresholds', 'from-weights']) == 2
    assert 'these weights carry no decision thresholds' in capsys.readouterr().err
