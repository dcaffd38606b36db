"""Tests of srdl_timm/data/inputs.py (what srdl-predict reads): collecting image files from folders, globs and explicit
paths. Reading them and per-file error reports through the CLI: tests/test_predict.py.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_data_inputs.py
"""
import os

import pytest

from fixtures_data import write_image
from srdl_timm.data.inputs import InputItem, collect_inputs


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    """A folder of images (a.jpg, b.png, sub/c.jpg, gray.png) and a non-image file bad/notes.txt beside it: the
    same layout as tests/test_predict.py's ``assets``."""
    root = tmp_path_factory.mktemp('inputs')
    imgs = root / 'imgs'
    good = [
        write_image(imgs / 'a.jpg', (70, 50), seed=1),
        write_image(imgs / 'b.png', (40, 60), seed=2),
        write_image(imgs / 'sub' / 'c.jpg', (33, 33), seed=3),
        write_image(imgs / 'gray.png', (45, 30), mode='L', seed=4),
    ]
    (root / 'bad').mkdir()
    (root / 'bad' / 'notes.txt').write_text('not an image\n')
    return dict(imgs=str(imgs), good=good, notes=str(root / 'bad' / 'notes.txt'))


def test_collect_inputs_folders_globs_recursion_and_duplicates(assets):
    """Folders give their image files sorted (sub-folders only with recursive); globs expand; a file reached twice
    is kept once; explicit non-image files are kept (to be reported later)."""
    flat = collect_inputs([assets['imgs']])
    assert [i.path for i in flat] == sorted([assets['good'][0], assets['good'][1], assets['good'][3]])
    deep = collect_inputs([assets['imgs']], recursive=True)
    assert os.path.join(assets['imgs'], 'sub', 'c.jpg') in [i.path for i in deep] and len(deep) == 4
    globbed = collect_inputs([os.path.join(assets['imgs'], '*.jpg'), assets['good'][0]])
    assert [i.path for i in globbed] == [assets['good'][0]]
    rglob = collect_inputs([os.path.join(assets['imgs'], '**', '*.jpg')], recursive=True)
    assert sorted(i.path for i in rglob) == sorted([assets['good'][0], assets['good'][2]])
    explicit = collect_inputs([assets['notes']])
    assert explicit == [InputItem(assets['notes'])]
