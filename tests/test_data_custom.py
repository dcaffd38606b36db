"""Tests of srdl_timm/data/custom.py (CSV, user COCO-format JSON), data/images.py (robust image opening) and
create_multilabel_dataset's option checking (data/factory.py), on tiny real files.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_data_custom.py
"""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from fixtures_data import write_coco_json, write_corrupt_image, write_csv, write_image
from srdl_timm.data import (
    CocoJsonMultiLabel, CsvMultiLabel, UnreadableImageError, create_multilabel_dataset, open_image)


# ----------------------------------------------------------------------------------------------- CSV
def test_csv_list_layout_sorted_label_names(tmp_path):
    """List layout: labels joined by ';' (names with spaces work); without classes.txt the classes are the
    sorted labels of the file; targets match what was written, rows in file order."""
    info = write_csv(tmp_path, 'train', num_images=6, label_names=('zebra', 'cat', 'traffic light'), seed=1)
    ds = create_multilabel_dataset('csv', str(tmp_path), 'train')
    assert isinstance(ds, CsvMultiLabel)
    assert ds.label_names == ['cat', 'traffic light', 'zebra']
    for i, (rel, labels) in enumerate(info['rows']):
        assert ds.image_paths[i] == os.path.join(str(tmp_path), rel)
        assert set(ds.labels(i)) == set(labels)
    assert ds[0][0].mode == 'RGB'


def test_csv_classes_txt_fixes_the_order_and_rejects_unknown_labels(tmp_path):
    """A classes.txt beside the CSV sets the class order; a label not in it raises ValueError naming file and
    line."""
    names = ('zebra', 'cat', 'traffic light')
    info = write_csv(tmp_path, 'train', num_images=5, label_names=names, seed=2, classes_txt=True)
    ds = create_multilabel_dataset('csv', str(tmp_path), 'train')
    assert ds.label_names == list(names)
    np.testing.assert_array_equal(ds.targets, info['targets'])
    with open(info['csv_file'], 'a') as f:
        f.write(f'{info["rows"][0][0].replace("000", "009")},cat;unicorn\n')
    with pytest.raises(ValueError, match=r"line 7: unknown label 'unicorn'") as e:
        create_multilabel_dataset('csv', str(tmp_path), 'train', check_files=False)
    assert info['csv_file'] in str(e.value)


def test_csv_wide_layout_with_ignore_and_empty_rows(tmp_path, caplog):
    """Wide layout: header columns are the classes, cells 1/0/-1 kept as is; rows without a present label are
    skipped and counted (kept with keep_empty=True)."""
    info = write_csv(tmp_path, 'val', num_images=6, layout='wide', seed=3, num_empty=2, num_ignore=2)
    with caplog.at_level(logging.WARNING):
        ds = create_multilabel_dataset('csv', str(tmp_path), 'val')
    assert ds.label_names == info['label_names'] and len(ds) == 4
    np.testing.assert_array_equal(ds.targets, info['targets'][info['non_empty']])
    assert (ds.targets == -1).sum() == 2 and '2 images without any present label skipped' in caplog.text
    kept = create_multilabel_dataset('csv', str(tmp_path), 'val', keep_empty=True)
    np.testing.assert_array_equal(kept.targets, info['targets'])


def test_csv_partial_labels_mark_classes_not_annotated(tmp_path):
    """List layout: '?name' makes that class -1 (not annotated), '?*' every class the row does not name, '!name' a
    class checked absent (0) under '?*'; names taken from the file drop the markers; the count of -1 entries is
    in info['unknown_entries']; the wide layout's -1 cells count the same way."""
    for i in range(4):
        write_image(tmp_path / 'images' / f'{i}.jpg')
    (tmp_path / 'train.csv').write_text('image,labels\n'
                                        'images/0.jpg,cat;?dog\n'
                                        'images/1.jpg,dog;!cat;?*\n'
                                        'images/2.jpg,zebra\n'
                                        'images/3.jpg,?zebra;cat\n')
    ds = create_multilabel_dataset('csv', str(tmp_path), 'train')
    assert ds.label_names == ['cat', 'dog', 'zebra']
    np.testing.assert_array_equal(ds.targets, [[1, -1, 0], [0, 1, -1], [0, 0, 1], [1, 0, -1]])
    assert ds.info['unknown_entries'] == 3
    (tmp_path / 'classes.txt').write_text('cat\ndog\nzebra\n?odd\n')  # a name that starts like a marker
    (tmp_path / 'val.csv').write_text('image,labels\nimages/0.jpg,?odd;?cat;dog\n')
    ds = create_multilabel_dataset('csv', str(tmp_path), 'val')
    np.testing.assert_array_equal(ds.targets, [[-1, 1, 0, 1]])
    wide = write_csv(tmp_path / 'wide', 'val', num_images=4, layout='wide', seed=3, num_ignore=2)
    assert create_multilabel_dataset('csv', str(tmp_path / 'wide'), 'val').info['unknown_entries'] == 2
    assert (wide['targets'] == -1).sum() == 2


@pytest.mark.parametrize('cell,match', [
    ('cat;?cat', "class 'cat' is named twice \\('cat' and '\\?cat'\\)"),
    ('cat;?unicorn', "unknown label 'unicorn'"),
    ('!dog;!dog', "class 'dog' is named twice"),
])
def test_csv_partial_label_errors_name_the_line(tmp_path, cell, match):
    """A class named twice in a row (present and not annotated, say) and a marked label outside the class list are
    errors naming the CSV and the line."""
    write_image(tmp_path / 'a.jpg')
    (tmp_path / 'classes.txt').write_text('cat\ndog\n')
    (tmp_path / 'train.csv').write_text(f'image,labels\na.jpg,{cell}\n')
    with pytest.raises(ValueError, match=match) as e:
        create_multilabel_dataset('csv', str(tmp_path), 'train')
    assert 'train.csv, line 2' in str(e.value)


@pytest.mark.parametrize('content,match', [
    ('image,labels\na.jpg,cat\nb.jpg\n', 'line 3: 1 fields'),
    ('picture,labels\na.jpg,cat\n', 'no image column'),
    ('image,cat,dog\na.jpg,1,2\n', "column 'dog': value '2'"),
    ('image,labels\na.jpg,cat\n./a.jpg,dog\n', "already listed on line 2"),
    ('image,labels\n,cat\n', 'empty image path'),
    ('', 'empty CSV'),
])
def test_bad_csv_raises_naming_file_and_line(tmp_path, content, match):
    """Wrong field counts, missing columns, bad wide cells, duplicate images, empty paths and empty files raise
    ValueError naming the CSV."""
    for n in ('a.jpg', 'b.jpg'):
        write_image(tmp_path / n)
    (tmp_path / 'train.csv').write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        create_multilabel_dataset('csv', str(tmp_path), 'train')
    assert 'train.csv' in str(e.value)


def test_csv_missing_files_raise(tmp_path):
    """A missing CSV or a listed image that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match='train.csv'):
        create_multilabel_dataset('csv', str(tmp_path), 'train')
    (tmp_path / 'train.csv').write_text('image,labels\nmissing.jpg,cat\n')
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        create_multilabel_dataset('csv', str(tmp_path), 'train')


# ----------------------------------------------------------------------------------------------- COCO-format JSON
def test_coco_json_default_paths_and_id_order(tmp_path):
    """'coco-json' reads root/annotations/{split}.json + root/images/{split}/ (file names with subfolders); classes
    are the file's categories in ascending id order even when listed otherwise."""
    info = write_coco_json(tmp_path, 'test', num_images=6, categories=('cat', 'dog', 'traffic light', 'zebra'),
                           seed=5, num_empty=1)
    data = json.load(open(info['ann_file']))
    assert [c['name'] for c in data['categories']] == ['zebra', 'traffic light', 'dog', 'cat']  # reverse id order
    ds = create_multilabel_dataset('coco-json', str(tmp_path), 'test')
    assert isinstance(ds, CocoJsonMultiLabel)
    assert ds.label_names == ['cat', 'dog', 'traffic light', 'zebra'] and len(ds) == 5
    np.testing.assert_array_equal(ds.targets, info['targets'])
    assert all(os.sep + 'sub' + os.sep in p for p in ds.image_paths)
    assert ds.info['dataset'] == 'coco-json' and ds.info['split'] == 'test'


def test_coco_json_explicit_paths_and_missing_ann_file(tmp_path):
    """ann_file/image_dir override the defaults; a missing annotation file raises FileNotFoundError naming it."""
    info = write_coco_json(tmp_path / 'a', 'train', num_images=3, seed=6)
    ds = create_multilabel_dataset('coco-json', str(tmp_path / 'elsewhere'), 'train', ann_file=info['ann_file'],
                                   image_dir=info['image_dir'])
    assert len(ds) == 3
    with pytest.raises(FileNotFoundError, match=os.path.join('annotations', 'val.json')):
        create_multilabel_dataset('coco-json', str(tmp_path / 'a'), 'val')


def _partial(info, image_fields):
    """Rewrite a written COCO-format file with extra fields on its images (by position in the file)."""
    data = json.load(open(info['ann_file']))
    for i, fields in image_fields.items():
        data['images'][i].update(fields)
    with open(info['ann_file'], 'w') as f:
        json.dump(data, f)
    return data


def test_coco_json_partial_labels_lvis_negatives_and_not_annotated_ids(tmp_path):
    """An image with LVIS's neg_category_ids is federated: annotated categories 1, listed ones 0, all others -1;
    not_annotated_category_ids makes the listed categories -1 and leaves the rest as without it; images without
    either field keep 0 for unannotated categories; info['unknown_entries'] counts the -1 entries."""
    info = write_coco_json(tmp_path, 'train', num_images=4, categories=('cat', 'dog', 'traffic light', 'zebra'),
                           seed=5)
    data = json.load(open(info['ann_file']))
    ids = {c['name']: c['id'] for c in data['categories']}
    col = {n: i for i, n in enumerate(info['label_names'])}
    annotated = {img['id']: {a['category_id'] for a in data['annotations'] if a['image_id'] == img['id']}
                 for img in data['images']}
    first, second = data['images'][0]['id'], data['images'][1]['id']
    neg = [c for c in ids.values() if c not in annotated[first]][:1]
    unknown = [c for c in ids.values() if c not in annotated[second]][:2]
    _partial(info, {0: {'neg_category_ids': neg, 'not_exhaustive_category_ids': sorted(annotated[first])},
                    1: {'not_annotated_category_ids': unknown}})
    ds = create_multilabel_dataset('coco-json', str(tmp_path), 'train')
    by_name = {n: c for n, c in ids.items()}
    expected = info['targets'].copy()
    for name, c in by_name.items():
        if c not in annotated[first]:
            expected[0, col[name]] = 0.0 if c in neg else -1.0
        if c in unknown:
            expected[1, col[name]] = -1.0
    np.testing.assert_array_equal(ds.targets, expected)
    assert ds.info['unknown_entries'] == int((expected == -1).sum()) == (4 - len(annotated[first]) - 1) + 2


@pytest.mark.parametrize('fields,match', [
    ({'neg_category_ids': [999]}, r'neg_category_ids lists unknown category ids \[999\]'),
    ({'not_annotated_category_ids': 'cat'}, 'must be a list of category ids'),
    ({'neg_category_ids': ['ANNOTATED']}, 'whose neg_category_ids lists it too'),
    ({'neg_category_ids': [3], 'not_annotated_category_ids': [3]}, 'both as absent'),
])
def test_coco_json_bad_partial_labels_name_the_file(tmp_path, fields, match):
    """Unknown category ids, a list that is not one, a category both annotated and listed as absent, and a
    category listed both as absent and as not annotated are errors naming the file."""
    info = write_coco_json(tmp_path, 'train', num_images=2, seed=1)
    data = json.load(open(info['ann_file']))
    if fields.get('neg_category_ids') == ['ANNOTATED']:
        img = data['images'][0]['id']
        fields = {'neg_category_ids': [next(a['category_id'] for a in data['annotations'] if a['image_id'] == img)]}
    elif 'not_annotated_category_ids' in fields and fields.get('neg_category_ids') == [3]:
        img = data['images'][0]['id']
        free = [c['id'] for c in data['categories']
                if c['id'] not in {a['category_id'] for a in data['annotations'] if a['image_id'] == img}]
        fields = {'neg_category_ids': free[:1], 'not_annotated_category_ids': free[:1]}
    _partial(info, {0: fields})
    with pytest.raises(ValueError, match=match) as e:
        create_multilabel_dataset('coco-json', str(tmp_path), 'train')
    assert info['ann_file'] in str(e.value)


def test_create_dataset_rejects_unknown_names_and_options(tmp_path):
    """An unknown dataset name or option raises ValueError naming it and listing the choices."""
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        create_multilabel_dataset('imagenet', str(tmp_path), 'val')
    with pytest.raises(ValueError, match=r"\['label_sep'\]"):
        create_multilabel_dataset('coco-json', str(tmp_path), 'val', label_sep=',')


# ----------------------------------------------------------------------------------------------- image files
@pytest.mark.parametrize('mode,ext', [('L', '.jpg'), ('RGBA', '.png'), ('LA', '.png'), ('P', '.png'),
                                      ('CMYK', '.jpg'), ('1', '.png'), ('I;16', '.png'), ('I;16', '.tif')])
def test_any_image_mode_opens_as_rgb(tmp_path, mode, ext):
    """Grayscale, alpha, palette, CMYK, 1-bit and 16-bit files open as 8-bit RGB of the same size."""
    path = write_image(tmp_path / f'x{ext}', size=(40, 30), mode=mode)
    assert Image.open(path).mode == mode
    img = open_image(path)
    assert img.mode == 'RGB' and img.size == (40, 30)


def test_16bit_gray_is_rescaled_not_clipped(tmp_path):
    """16-bit gray values v map to round(v / 257): 0 → 0, 32896 → 128, 65535 → 255 (PIL's convert would clip)."""
    arr = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16).repeat(2, axis=0)
    Image.fromarray(arr).save(tmp_path / 'g16.png')
    rgb = np.asarray(open_image(tmp_path / 'g16.png'))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255, 4])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_cmyk_and_rgba_keep_colours(tmp_path):
    """A CMYK JPEG comes back close to its RGB colour; RGBA drops alpha and keeps RGB."""
    Image.new('RGB', (16, 16), (200, 40, 90)).convert('CMYK').save(tmp_path / 'c.jpg', quality=95)
    assert np.abs(np.asarray(open_image(tmp_path / 'c.jpg')).astype(int) - [200, 40, 90]).max() <= 8
    Image.new('RGBA', (8, 8), (10, 20, 30, 0)).save(tmp_path / 'a.png')
    assert open_image(tmp_path / 'a.png').getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize('kind', ['truncated', 'garbage', 'empty'])
def test_unreadable_images_raise_naming_the_file(tmp_path, kind):
    """Truncated, garbage and empty files raise UnreadableImageError (a ValueError) naming the file."""
    path = write_corrupt_image(tmp_path / f'{kind}.jpg', kind)
    with pytest.raises(UnreadableImageError, match=f'{kind}.jpg'):
        open_image(path)
    assert issubclass(UnreadableImageError, ValueError)
    with pytest.raises(FileNotFoundError, match='nope.jpg'):
        open_image(tmp_path / 'nope.jpg')


def test_skip_policy_counts_unreadable_images_in_a_csv_dataset(tmp_path):
    """on_corrupt='skip' replaces an unreadable image by an all-ignore sample and counts it; 'error' raises."""
    info = write_csv(tmp_path, 'train', num_images=3, seed=7)
    write_corrupt_image(os.path.join(str(tmp_path), info['rows'][2][0]), 'garbage')
    ds = CsvMultiLabel(info['csv_file'], on_corrupt='skip')
    targets = [ds[i][1] for i in range(3)]
    assert ds.num_skipped == 1 and (targets[2] == -1).all() and not (targets[0] == -1).any()
    with pytest.raises(UnreadableImageError):
        CsvMultiLabel(info['csv_file'])[2]
