"""``srdl-publish``: write SRDL weights as a timm Hub folder (``--local-dir``) or push them to the Hub.

    srdl-publish --checkpoint runs/coco/model.safetensors --metrics val.json --repo-id org/srdl_resnet101.coco
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any, Dict, Optional

from . import add_common_args, run_cli
from ..errors import InputError

__all__ = ['build_parser', 'run', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``srdl-publish``."""
    p = argparse.ArgumentParser(
        prog='srdl-publish',
        description='Publish SRDL weights in timm\'s Hugging Face Hub layout (model.safetensors, config.json, '
                    'README.md model card): push to the Hub, or write the folder with --local-dir (no network). '
                    'Optionally register the weights in weights/manifest.json.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--checkpoint', default=None,
                   help='weights: srdl-train\'s model.safetensors or run folder (its train_config.json names the '
                        'model), a published folder, or a timm train.py checkpoint (.pth.tar/.pth, read with '
                        'weights_only=True)')
    g.add_argument('--model', default=None,
                   help='timm model name (overrides the checkpoint\'s); without --checkpoint: a pretrained tag, '
                        'hf-hub:org/repo or local-dir:DIR, loaded with its weights')
    g.add_argument('--model-args', default=None, help='model arguments as inline JSON or a JSON file')
    g.add_argument('--label-names', default=None, help='text file with one class name per line, in output order')
    g.add_argument('--thresholds', default=None, metavar='FILE',
                   help='per-class decision thresholds to publish instead of those the weights carry (a file of '
                        'srdl-validate --tune-thresholds); written to config.json and the card')
    g = p.add_argument_group('destination')
    g.add_argument('--repo-id', default=None, help='Hub repo org/name')
    g.add_argument('--local-dir', default=None, help='write the folder here instead of pushing (no network)')
    g.add_argument('--overwrite', action='store_true', help='replace a published model already in --local-dir')
    g.add_argument('--private', action='store_true', help='create the Hub repo private')
    g.add_argument('--commit-message', default='Add SRDL weights (model.safetensors, config.json, model card)')
    g.add_argument('--revision', default=None, help='Hub branch to push to')
    g.add_argument('--create-pr', action='store_true', help='open a Hub pull request instead of committing')
    g.add_argument('--token', default=None, help='Hub token (default: HF_TOKEN / the logged-in token)')
    g = p.add_argument_group('model card')
    g.add_argument('--metrics', default=None, help='JSON report of srdl-validate --output for these weights')
    g.add_argument('--protocol', default=None, help='protocol fields (inline JSON or file) added to the report\'s')
    g.add_argument('--dataset', default=None, help='dataset name stated in the card (default: the report\'s)')
    g.add_argument('--hub-dataset', default=None,
                   help='the dataset\'s Hugging Face Hub id (org/name), for the card\'s `datasets` metadata and '
                        'model-index; leave out for a dataset that is not on the Hub')
    g.add_argument('--license', default=None, help='license of the weights (default: apache-2.0)')
    g.add_argument('--recipe', default=None, help='the training command')
    g.add_argument('--data-config', default=None,
                   help='pre-processing to record (inline JSON or file: input_size, interpolation, mean, std, '
                        'crop_pct, crop_mode); default: the report\'s, else the model\'s')
    g.add_argument('--description', default=None,
                   help='an extra paragraph for the model card (e.g. the domain and label set the weights know)')
    g = p.add_argument_group('registry (weights/manifest.json)')
    g.add_argument('--manifest-tag', default=None, help='also list the weights in the manifest under this tag')
    g.add_argument('--ship', action='store_true',
                   help='with --manifest-tag: copy model.safetensors into weights/ (offline use)')
    g.add_argument('--manifest', default=None, help='manifest to edit (default: weights/manifest.json)')
    g.add_argument('--label-names-source', default=None, help='with --manifest-tag: where the class names come from')
    g.add_argument('--replace', action='store_true', help='with --manifest-tag: replace an existing entry')
    g.add_argument('--manifest-markdown', action='store_true', help='print the manifest as a markdown table and exit')
    g.add_argument('--verify-manifest', action='store_true',
                   help='check the sha256 of every manifest weight on this machine and exit (1 on a mismatch)')
    add_common_args(p)
    return p


def _json_or_file(value: Optional[str], option: str) -> Optional[Dict[str, Any]]:
    """A CLI value that is inline JSON or the path of a JSON file, as a dict."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith('{'):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f'{option}: not valid JSON ({e}): {value}') from e
    else:
        from ..manifest import read_json
        data = read_json(value, f'{option} file')
    if not isinstance(data, dict):
        raise InputError(f'{option} must be a JSON object, got {type(data).__name__}')
    return data


def _load(args: argparse.Namespace):
    """The model to publish, loaded strictly (a timm train.py checkpoint converted safely)."""
    from ..hub import load_for_publishing
    from ..utils import read_label_names

    return load_for_publishing(
        checkpoint=args.checkpoint, model=args.model, model_kwargs=_json_or_file(args.model_args, '--model-args'),
        label_names=read_label_names(args.label_names) if args.label_names else None, thresholds_file=args.thresholds)


def run(args: argparse.Namespace) -> int:
    """Publish (and optionally register) the weights; print what was written."""
    from ..hub import PUBLISHED_FILES, push_folder, save_pretrained_dir
    from ..manifest import manifest_markdown, register_weights, verify_manifest
    from ..model_card import normalise_metrics
    from ..models.pretrained import manifest_path

    if args.manifest_markdown:
        print(manifest_markdown(args.manifest), end='')
        return 0
    if args.verify_manifest:
        report = verify_manifest(args.manifest)
        for name, status in report:
            print(f'{name}: {status}')
        if not report:
            print('the manifest lists no weights')
        return 1 if any(s.startswith('MISMATCH') for _, s in report) else 0
    if not args.checkpoint and not args.model:
        raise InputError('give --checkpoint (weights file or run folder) or --model NAME (a tag, hf-hub:, local-dir:)')
    if not args.repo_id and not args.local_dir:
        raise InputError('give --repo-id ORG/NAME (push) and/or --local-dir DIR (write a folder)')
    held = [f for f in PUBLISHED_FILES if args.local_dir and os.path.isfile(os.path.join(args.local_dir, f))]
    if held and not args.overwrite:
        raise InputError(f'--local-dir {args.local_dir} already holds a published model ({", ".join(held)}); choose '
                         'another folder or pass --overwrite to replace it')
    if args.manifest_tag and not (args.ship or not args.local_dir):
        raise InputError('--manifest-tag needs weights that exist: add --ship (copy into weights/) or push to the '
                         'Hub (no --local-dir)')
    if args.manifest_tag and not args.metrics:
        raise InputError('--manifest-tag needs --metrics (an srdl-validate report of these weights)')
    protocol = _json_or_file(args.protocol, '--protocol')
    dataset = args.dataset or normalise_metrics(args.metrics, protocol)[1].get('dataset')
    if args.manifest_tag and not dataset:
        raise InputError('--manifest-tag needs --dataset (the metrics report names none)')

    model = _load(args)
    card = dict(metrics=args.metrics, protocol=protocol, dataset=args.dataset, hub_dataset=args.hub_dataset,
                license=args.license, recipe=args.recipe, data_config=_json_or_file(args.data_config, '--data-config'),
                description=args.description)
    with tempfile.TemporaryDirectory() as tmp:
        # the folder that is pushed is the folder that gets registered (same bytes, same sha256)
        staged = save_pretrained_dir(model, args.local_dir or tmp, repo_id=args.repo_id, **card)
        result = staged
        if not args.local_dir:
            result = push_folder(tmp, args.repo_id, private=args.private, commit_message=args.commit_message,
                                 token=args.token, revision=args.revision, create_pr=args.create_pr)
        where = result.local_dir if result.local_dir is not None else result.url
        print(f'published {", ".join(result.files)} -> {where} (model.safetensors sha256 {result.sha256})')
        if args.manifest_tag:
            entry = register_weights(
                staged.local_dir, tag=args.manifest_tag, dataset=dataset, recipe=args.recipe or 'not recorded',
                label_names_source=args.label_names_source or 'config.json label_names of the published folder',
                metrics=args.metrics, protocol=protocol, ship=args.ship,
                hf_hub_id=result.repo_id if result.url else None, hf_revision=result.revision,
                manifest=args.manifest, replace=args.replace)
            print(f'registered {entry["architecture"]}.{entry["tag"]} in {args.manifest or manifest_path()}')
    return 0


def main(argv=None) -> int:
    """``srdl-publish`` console script."""
    return run_cli('srdl-publish', build_parser, run, argv)


if __name__ == '__main__':
    import sys
    sys.exit(main())
