"""Bad input through srdl-validate, srdl-predict and srdl-export (issue #12): every case ends in one or two lines
naming the file and the fault, with exit status 2 (input) or 1 (per-file failures in predict), never a traceback;
valid input that used to be refused (a CSV with a UTF-8 BOM, a folder holding one looping symlink) is accepted.

The console scripts are called in-process (``srdl_timm.cli.<name>.main``), where a traceback would be an exception
escaping ``main``; two cases also run as real processes to check stderr as a user sees it.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_cli.py
"""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from fixtures_data import write_coco_json, write_corrupt_image, write_csv, write_image, write_voc
from srdl_timm.cli import export as export_cli
from srdl_timm.cli import predict as predict_cli
from srdl_timm.cli import validate as validate_cli

IMG = 32
MAINS = {'validate': validate_cli.main, 'predict': predict_cli.main, 'export': export_cli.main}


class _Evil:
    """Pickles to a call of os.system: a checkpoint that must never be unpickled."""

    def __reduce__(self):
        return (os.system, ('echo pwned',))


def _run(cli, argv, capsys):
    """Call a console script in-process; an escaping exception (a traceback for the user) fails the test."""
    rc = MAINS[cli](argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _weights(tmp_path, num_classes=3, name='w.safetensors'):
    torch.manual_seed(0)
    model = timm.create_model('resnet10t', num_classes=num_classes).eval()
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path), model


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A good CSV dataset (3 classes), a good COCO-format dataset, a good VOC devkit and one good image."""
    root = tmp_path_factory.mktemp('cli')
    csv_info = write_csv(root / 'csv', 'val', num_images=4, seed=1, classes_txt=True)
    coco_info = write_coco_json(root / 'coco', 'val', num_images=4, categories=('cat', 'dog', 'zebra'), seed=2)
    voc_info = write_voc(root / 'voc', {'test': 3}, seed=3)
    image = write_image(root / 'one.jpg', size=(40, 30), seed=4)
    return dict(root=root, csv=csv_info, coco=coco_info, voc=voc_info, image=image)


def _validate_args(data_kind, root, *extra):
    return ['--model', 'resnet10t', '--random-init', '--data', data_kind, '--root', str(root), '--img-size', str(IMG),
            '--workers', '0', '--batch-size', '2', '--quiet', *extra]


# ----------------------------------------------------------------------------------------------------------
# datasets: one case per kind of bad annotation / image (#12 "srdl-validate has no error boundary")
# ----------------------------------------------------------------------------------------------------------
def _copy_coco(src_info, dst_root, mutate=None, text=None):
    """A copy of the good COCO-format split under dst_root, with its JSON mutated or replaced by raw text."""
    ann = dst_root / 'annotations' / 'val.json'
    ann.parent.mkdir(parents=True, exist_ok=True)
    img_dir = dst_root / 'images'
    if not img_dir.exists():
        os.symlink(os.path.dirname(src_info['image_dir']), img_dir)
    if text is None:
        d = json.loads(json.dumps(src_info['data']))
        mutate(d)
        text = json.dumps(d)
    ann.write_text(text)
    return str(ann)


COCO_CASES = {
    'malformed': (None, '{"images": [{"id": 1,, }', 'malformed or truncated JSON'),
    'truncated': ('truncate', None, 'malformed or truncated JSON'),
    'unknown_category': (lambda d: d['annotations'][0].update(category_id=999), None, 'unknown category_id 999'),
    'unknown_image': (lambda d: d['annotations'][0].update(image_id=123456), None, 'unknown image_id 123456'),
    'duplicate_image_ids': (lambda d: d['images'][1].update(id=d['images'][0]['id']), None, 'duplicate image ids'),
}


@pytest.mark.parametrize('case', sorted(COCO_CASES))
def test_validate_bad_coco_json_is_one_line_exit_2(case, data, tmp_path, capsys):
    """Malformed or truncated COCO JSON, an unknown category or image id and duplicate image ids each give
    'srdl-validate: error: <file>: <fault>' and exit status 2."""
    mutate, text, words = COCO_CASES[case]
    if mutate == 'truncate':
        full = json.dumps(data['coco']['data'])
        mutate, text = None, full[:len(full) // 2]
    ann = _copy_coco(data['coco'], tmp_path, mutate, text)
    rc, _, err = _run('validate', _validate_args('coco-json', tmp_path), capsys)
    assert rc == 2, err
    assert err.startswith('srdl-validate: error: ') and ann in err and words in err, err
    assert len(err.strip().splitlines()) <= 2 and 'Traceback' not in err


def test_validate_missing_image_files_names_them(data, tmp_path, capsys):
    """Image files listed in the annotations but absent from disk are named (exit 2)."""
    ann = _copy_coco(data['coco'], tmp_path, lambda d: d['images'][0].update(file_name='sub/gone.jpg'))
    rc, _, err = _run('validate', _validate_args('coco-json', tmp_path), capsys)
    assert rc == 2 and 'gone.jpg' in err and 'missing' in err and ann in err, err


def _csv_root(tmp_path, data, text):
    root = tmp_path / 'csvcase'
    root.mkdir()
    os.symlink(os.path.join(os.path.dirname(data['csv']['csv_file']), 'images'), root / 'images')
    (root / 'classes.txt').write_text('cat\ndog\ntraffic light\n')
    (root / 'val.csv').write_bytes(text.encode('utf-8') if isinstance(text, str) else text)
    return root


def _good_csv_text(data):
    return ''.join(['image,labels\n'] + [f'{rel},{";".join(labels)}\n' for rel, labels in data['csv']['rows']])


@pytest.mark.parametrize('case,words', [
    ('unknown_label', "line 3: unknown label 'horse'"),
    ('missing_column', 'no image column found'),
    ('empty', 'empty CSV'),
])
def test_validate_bad_csv_is_one_line_exit_2(case, words, data, tmp_path, capsys):
    """A CSV with an unknown label (named with its line), without an image column, or empty: exit 2, one line."""
    good = _good_csv_text(data).splitlines(keepends=True)
    text = {'unknown_label': ''.join(good[:2] + [good[2].rstrip('\n') + ';horse\n'] + good[3:]),
            'missing_column': ''.join(['picture,labels\n'] + good[1:]),
            'empty': ''}[case]
    root = _csv_root(tmp_path, data, text)
    rc, _, err = _run('validate', _validate_args('csv', root), capsys)
    assert rc == 2 and str(root / 'val.csv') in err and words in err, err
    assert len(err.strip().splitlines()) == 1


def test_validate_accepts_a_csv_saved_by_excel_with_a_bom(data, tmp_path, capsys):
    """A UTF-8 CSV with a byte-order mark (Excel's "CSV UTF-8") reads as the same dataset as without it."""
    root = _csv_root(tmp_path, data, b'\xef\xbb\xbf' + _good_csv_text(data).encode('utf-8'))
    out = tmp_path / 'r.json'
    rc, _, err = _run('validate', _validate_args('csv', root, '--output', str(out)), capsys)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert rep['label_names'] == ['cat', 'dog', 'traffic light'] and rep['protocol']['num_images'] == 4


@pytest.mark.parametrize('kind', ['coco-json', 'voc'])
def test_validate_accepts_bom_in_coco_json_and_voc_image_sets(kind, data, tmp_path, capsys):
    """A UTF-8 byte-order mark at the start of a COCO JSON file or a VOC ImageSets list is not part of the data."""
    import shutil
    if kind == 'coco-json':
        root = tmp_path
        ann = _copy_coco(data['coco'], root, lambda d: None)
        raw = open(ann, 'rb').read()
        open(ann, 'wb').write(b'\xef\xbb\xbf' + raw)
    else:
        root = tmp_path / 'voc'
        shutil.copytree(data['voc']['voc_root'], root / 'VOC2007')
        split = root / 'VOC2007' / 'ImageSets' / 'Main' / 'test.txt'
        split.write_bytes(b'\xef\xbb\xbf' + split.read_bytes())
    out = tmp_path / 'r.json'
    rc, _, err = _run('validate', _validate_args(kind, root, '--output', str(out)), capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())['protocol']['num_images'] == (4 if kind == 'coco-json' else 3)


def _voc_copy(data, tmp_path, xml_text):
    import shutil
    dst = tmp_path / 'voc'
    shutil.copytree(data['voc']['voc_root'], dst / 'VOC2007')
    first = data['voc']['ids']['test'][0]
    xml = dst / 'VOC2007' / 'Annotations' / f'{first}.xml'
    xml.write_text(xml_text)
    return dst, str(xml)


@pytest.mark.parametrize('case,xml,words', [
    ('malformed', '<annotation><object><name>dog</name></object>', 'malformed XML'),
    ('no_name', '<annotation><object><difficult>0</difficult></object></annotation>', 'object #0 has no <name>'),
])
def test_validate_bad_voc_xml_is_one_line_exit_2(case, xml, words, data, tmp_path, capsys):
    """Malformed VOC XML and an object without <name> name the XML file; exit 2."""
    root, xml_file = _voc_copy(data, tmp_path, xml)
    rc, _, err = _run('validate', _validate_args('voc', root), capsys)
    assert rc == 2 and xml_file in err and words in err, err


@pytest.mark.parametrize('workers', [0, 2])
def test_validate_corrupt_image_gives_the_original_message(workers, data, tmp_path, capsys):
    """A corrupt image stops srdl-validate with the file named; with --workers 2 the message is the same (not
    'Caught UnreadableImageError in DataLoader worker process 0')."""
    root = tmp_path / 'c'
    info = write_csv(root, 'val', num_images=4, seed=5)
    bad = os.path.join(str(root), info['rows'][2][0])
    write_corrupt_image(bad, 'truncated')
    argv = _validate_args('csv', root)
    argv[argv.index('--workers') + 1] = str(workers)
    rc, _, err = _run('validate', argv, capsys)
    assert rc == 2, err
    assert err.startswith('srdl-validate: error: ') and bad in err and 'corrupt or truncated image' in err, err
    assert 'DataLoader worker' not in err and 'Caught' not in err and 'Traceback' not in err


# ----------------------------------------------------------------------------------------------------------
# weights: truncated, pickled, another class count (#12 "truncated safetensors", "pickle checkpoint")
# ----------------------------------------------------------------------------------------------------------
def _bad_weights(tmp_path, kind):
    good, _ = _weights(tmp_path, name='good.safetensors')
    if kind == 'truncated':
        path = tmp_path / 'truncated.safetensors'
        raw = open(good, 'rb').read()
        path.write_bytes(raw[:len(raw) // 3])
    elif kind in ('pickle', 'pickle_folder'):
        folder = tmp_path / 'hub_folder' if kind == 'pickle_folder' else tmp_path
        folder.mkdir(exist_ok=True)
        path = folder / 'pytorch_model.bin'
        torch.save({'state_dict': _Evil()}, path)
        if kind == 'pickle_folder':
            return str(folder), str(path)
    elif kind == 'garbage':
        path = tmp_path / 'garbage.safetensors'
        path.write_bytes(b'\x00\x01not a safetensors file at all' * 4)
    else:
        raise ValueError(kind)
    return str(path), str(path)


@pytest.mark.parametrize('kind', ['truncated', 'pickle', 'pickle_folder', 'garbage'])
@pytest.mark.parametrize('cli', ['validate', 'predict', 'export'])
def test_unloadable_weights_name_the_file_exit_2(cli, kind, data, tmp_path, capsys):
    """Truncated or garbage safetensors and a pickle with code in it (as a file, or the only weights of a folder)
    are refused with the file named, exit 2, and never an advice to unpickle (weights_only=False)."""
    path, named = _bad_weights(tmp_path, kind)
    model = ['--model', 'resnet10t', '--checkpoint', path]
    argv = {'validate': model + ['--data', 'csv', '--root', os.path.dirname(data['csv']['csv_file']),
                                 '--workers', '0', '--quiet'],
            'predict': [data['image'], *model, '--workers', '0', '--quiet'],
            'export': model + ['--onnx', str(tmp_path / 'm.onnx')]}[cli]
    rc, _, err = _run(cli, argv, capsys)
    assert rc == 2, err
    assert err.startswith(f'srdl-{cli}: error: ') and named in err, err
    assert 'weights_only=False' not in err and 'Traceback' not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / 'm.onnx').exists()


def _local_dir_with_wrong_class_count(tmp_path):
    """A timm local-dir whose config.json says 5 classes while its weights have 10."""
    folder = tmp_path / 'local'
    folder.mkdir()
    torch.manual_seed(0)
    model = timm.create_model('resnet10t', num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / 'model.safetensors'))
    (folder / 'config.json').write_text(json.dumps(dict(architecture='resnet10t', num_classes=5,
                                                        pretrained_cfg=dict(input_size=[3, IMG, IMG]))))
    return folder


@pytest.mark.parametrize('cli', ['predict', 'export'])
def test_class_count_mismatch_is_an_error_not_a_new_head(cli, data, tmp_path, capsys):
    """local-dir: with config num_classes=5 and 10-class weights: exit 2 naming the classifier, no predictions from
    a re-initialised head, no export."""
    folder = _local_dir_with_wrong_class_count(tmp_path)
    model = ['--model', f'local-dir:{folder}']
    argv = {'predict': [data['image'], *model, '--workers', '0', '--quiet', '--format', 'json'],
            'export': model + ['--onnx', str(tmp_path / 'm.onnx')]}[cli]
    rc, out, err = _run(cli, argv, capsys)
    assert rc == 2 and 'results' not in out, err
    assert 'fc.weight' in err or 'classes' in err, err
    assert not (tmp_path / 'm.onnx').exists()


def test_validate_weights_for_another_label_set_are_refused(data, tmp_path, capsys):
    """A 5-class checkpoint on a 3-class dataset: exit 2 naming both counts (never a re-initialised head)."""
    path, _ = _weights(tmp_path, num_classes=5)
    rc, _, err = _run('validate', ['--model', 'resnet10t', '--checkpoint', path, '--data', 'csv', '--root',
                                   os.path.dirname(data['csv']['csv_file']), '--workers', '0', '--quiet'], capsys)
    assert rc == 2 and '5' in err and '3' in err, err


# ----------------------------------------------------------------------------------------------------------
# predict inputs: a looping symlink among good images (#12 "one looping symlink fails the whole folder")
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('recursive', [False, True])
def test_looping_symlink_is_reported_alone_and_the_rest_predicted(recursive, tmp_path, capsys):
    """A folder with two good images and one self-referencing link: the images are predicted, the link is one
    failed row named 'symbolic link loop' (not 'permission denied'), exit status 1."""
    folder = tmp_path / 'imgs'
    good = [write_image(folder / 'a.jpg', seed=1), write_image(folder / 'b.png', seed=2)]
    loop = folder / 'loop.jpg'
    os.symlink(loop, loop)
    out = tmp_path / 'p.json'
    argv = [str(folder), '--model', 'resnet10t', '--random-init', '--num-classes', '3', '--img-size', str(IMG),
            '--workers', '0', '--quiet', '--format', 'json', '--output', str(out)] + (['-r'] if recursive else [])
    rc, _, err = _run('predict', argv, capsys)
    assert rc == 1, err
    by_path = {r['path']: r for r in json.loads(out.read_text())['results']}
    assert set(by_path) == {*good, str(loop)}
    assert all(by_path[p]['ok'] and by_path[p]['labels'] is not None for p in good)
    assert not by_path[str(loop)]['ok'] and 'symbolic link loop' in by_path[str(loop)]['error']
    assert 'permission denied' not in by_path[str(loop)]['error']


# ----------------------------------------------------------------------------------------------------------
# the corpus: a folder of generated bad files, each through the scripts that read it
# ----------------------------------------------------------------------------------------------------------
def _corpus(root, data):
    """[(case name, cli, argv, file that must be named)] over generated bad files."""
    cases = []
    csv_dir = os.path.dirname(data['csv']['csv_file'])
    w = root / 'weights'
    w.mkdir()
    for kind in ('truncated', 'pickle', 'garbage'):
        path, _ = _bad_weights(w, kind)
        cases += [(f'{kind}-weights', 'validate', ['--model', 'resnet10t', '--checkpoint', path, '--data', 'csv',
                                                   '--root', csv_dir, '--workers', '0', '--quiet'], path),
                  (f'{kind}-weights', 'predict', [data['image'], '--model', 'resnet10t', '--checkpoint', path,
                                                  '--workers', '0', '--quiet'], path),
                  (f'{kind}-weights', 'export', ['--model', 'resnet10t', '--checkpoint', path, '--torchscript',
                                                 str(root / 'x.pt')], path)]
    for name, (mutate, text, _) in COCO_CASES.items():
        if mutate == 'truncate':
            full = json.dumps(data['coco']['data'])
            mutate, text = None, full[:len(full) // 2]
        case_root = root / f'coco_{name}'
        ann = _copy_coco(data['coco'], case_root, mutate, text)
        cases.append((f'coco-{name}', 'validate', _validate_args('coco-json', case_root), ann))
    for name, text in (('empty', ''), ('header_only', 'image,labels\n'), ('ragged', 'image,labels\na.jpg\n'),
                       ('not_utf8', 'image,labels\n\xe9t\xe9.jpg,cat\n'.encode('latin-1')),
                       ('binary', bytes(range(256)))):
        case_root = root / f'csv_{name}'
        case_root.mkdir()
        (case_root / 'val.csv').write_bytes(text.encode('utf-8') if isinstance(text, str) else text)
        cases.append((f'csv-{name}', 'validate', _validate_args('csv', case_root), str(case_root / 'val.csv')))
    for name, xml in (('truncated_xml', '<annotation><object><name>dog'), ('no_name', '<annotation><object/>'
                                                                                      '</annotation>'),
                      ('unknown_class', '<annotation><object><name>dragon</name></object></annotation>'),
                      ('bad_difficult', '<annotation><object><name>dog</name><difficult>yes</difficult></object>'
                                        '</annotation>')):
        import shutil
        case_root = root / f'voc_{name}'
        shutil.copytree(data['voc']['voc_root'], case_root / 'VOC2007')
        xml_file = case_root / 'VOC2007' / 'Annotations' / f'{data["voc"]["ids"]["test"][1]}.xml'
        xml_file.write_text(xml)
        cases.append((f'voc-{name}', 'validate', _validate_args('voc', case_root), str(xml_file)))
    for kind in ('truncated', 'garbage', 'empty'):
        case_root = root / f'img_{kind}'
        info = write_csv(case_root, 'val', num_images=3, seed=7)
        bad = os.path.join(str(case_root), info['rows'][0][0])
        write_corrupt_image(bad, kind)
        cases.append((f'image-{kind}', 'validate', _validate_args('csv', case_root), bad))
        cases.append((f'image-{kind}', 'predict', [bad, '--model', 'resnet10t', '--random-init', '--num-classes', '3',
                                                   '--img-size', str(IMG), '--workers', '0', '--quiet'], bad))
    labels = root / 'labels.txt'
    labels.write_text('only\none\n')
    cases.append(('label-file-count', 'predict', [data['image'], '--model', 'resnet10t', '--random-init',
                                                  '--num-classes', '3', '--label-names', str(labels), '--quiet'],
                  str(labels)))
    return cases


def test_corpus_of_bad_files_never_shows_a_traceback(data, tmp_path, capsys):
    """Every generated bad file, through every script that reads it: a non-zero exit status, no exception
    escaping main (no traceback), and the file named in what the user sees (stderr, or predict's output)."""
    failures = []
    cases = _corpus(tmp_path, data)
    assert len(cases) >= 28
    for name, cli, argv, named in cases:
        try:
            rc, out, err = _run(cli, argv, capsys)
        except BaseException as e:  # noqa: BLE001 - a traceback the user would see
            failures.append(f'{name} ({cli}): {type(e).__name__}: {e}')
            continue
        seen = err + out
        if rc == 0 or 'Traceback' in seen or named not in seen:
            failures.append(f'{name} ({cli}): rc={rc} stderr={err.strip()[-300:]!r}')
    assert not failures, '\n'.join(failures)


@pytest.mark.slow
def test_console_scripts_print_one_line_as_a_process(data, tmp_path):
    """As real processes (what a user runs): a truncated checkpoint (srdl-predict) and a malformed COCO file
    (srdl-validate) print no traceback, one 'error:' line naming the file, exit 2; --debug shows the traceback."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(sys.path))
    path, _ = _bad_weights(tmp_path, 'truncated')
    ann = _copy_coco(data['coco'], tmp_path / 'coco', None, '{"images": [')
    runs = [
        (['-m', 'srdl_timm.cli.predict', data['image'], '--model', 'resnet10t', '--checkpoint', path, '--quiet'],
         path),
        (['-m', 'srdl_timm.cli.validate'] + _validate_args('coco-json', tmp_path / 'coco'), ann),
    ]
    for argv, named in runs:
        proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert 'Traceback' not in proc.stderr and named in proc.stderr
        assert [line for line in proc.stderr.splitlines() if 'error:' in line]
    proc = subprocess.run([sys.executable, *runs[1][0], '--debug'], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and 'Traceback' in proc.stderr
