"""Why does SRDL's spatial attention (SA) stop finding the objects once channel attention (CA) is on? (issue #15, 0)

Trains the CAR row of the ``--quick`` protocol (Fashion Scenes, frozen-trunk trainer) once per suspected cause and
seed, changing one thing at a time, and prints the attention pointing game (how often a present class's SA map
peaks on a box of that class; chance = a random cell) with mAP, one JSON line per run::

    python benchmarks/sa_diagnosis.py --seeds 0 1 2 --variants ref fs_zero_init fusion_product bn_batch_stats
    python benchmarks/sa_diagnosis.py --at-init --seeds 0 1 2 3 4 5    # the untrained head (no training)

Variants (everything else is the quick protocol): ``ref`` (as is), ``no_ca`` (the CAR w/o CA row), ``lr3e-4`` /
``lr1e-4`` (head and tail learning rate), ``fs_zero_init`` (``f_s`` of eq. 5 zero-initialised: SA starts at 0.5
everywhere instead of PyTorch's default init), ``fusion_product`` (eq. 6 as ``F * SA * CA`` instead of the paper's
``0.5 F * SA + 0.5 F * CA``; a deviation, tested as a cause only), ``bn_batch_stats`` (BatchNorm of the trained
units on batch statistics), ``stages0`` (the whole backbone frozen), ``stages4`` (the last 4 backbone units
trained), ``img256`` (256 px: an 8x8 grid instead of 4x4). For issue #24 (is SA one map shared by every class?),
with ``--zero-init-spatial`` (the model's default): ``no_gcn`` (the CAR w/o GCN row), ``gcn_self_0.95`` (the label
graph's ``V`` starts with 95 % self weight instead of 80 %: less smoothing of the nodes), ``fw_no_bias`` (``f_w``
without bias, so ``f_w(x_c)`` has no part common to every class), ``random_nodes`` (seeded random nodes of the word
vectors' norm instead of GloVe: are similar word vectors the cause?). Each JSON line has the pointing game, the
class-discriminative pointing game and the map similarity (:mod:`benchmarks.offline.attention_stats`). Interventions on the model are applied here, after
``create_model``, and only to the runs of that variant. Every variant starts from PyTorch's init of ``f_s``
(the model's default before this diagnosis made ``zero_init_spatial=True`` the default), so ``ref`` is that init.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from srdl_timm.layers.car import CategoryAttention  # noqa: E402

import benchmarks.offline as bm  # noqa: E402
from benchmarks.offline import runs as runs_module  # noqa: E402

#: variant -> (row, config overrides, model intervention or None)
VARIANTS = {
    'ref': ('car', {}, None), 'no_ca': ('car_no_ca', {}, None),
    'lr3e-4': ('car', {'lr': 3e-4}, None), 'lr1e-4': ('car', {'lr': 1e-4}, None),
    'fs_zero_init': ('car', {}, 'fs_zero_init'), 'fusion_product': ('car', {}, 'fusion_product'),
    'bn_batch_stats': ('car', {'batchnorm': 'train'}, None),
    'stages0': ('car', {'train_stages': 0}, None), 'stages4': ('car', {'train_stages': 4}, None),
    'img256': ('car', {'img_size': 256}, None),
    # issue #24 (is SA category-specific?), run with --zero-init-spatial (the model's default since #15)
    'no_gcn': ('car_no_gcn', {}, None), 'gcn_self_0.95': ('car', {}, 'gcn_self_0.95'),
    'fw_no_bias': ('car', {}, 'fw_no_bias'), 'random_nodes': ('car', {}, 'random_nodes'),
}
_CACHE_KEYS = ('train_stages', 'img_size')  # overrides that need their own trunk cache


def _product_pool(self, feat, sa, ca):
    """Eq. 6 replaced by ``max_p F_p * SA_p * CA`` (both attentions on)."""
    if sa is None or ca is None:
        return _ORIGINAL_POOL(self, feat, sa, ca)
    return (feat.unsqueeze(1) * sa.unsqueeze(-1) * ca.unsqueeze(2)).amax(2)


_ORIGINAL_POOL = CategoryAttention.pool


@contextlib.contextmanager
def intervention(name):
    """Apply a model intervention to every model created inside the block."""
    original_create = runs_module.create_model

    def create(*args, **kwargs):
        model = original_create(*args, **kwargs)
        if name == 'fs_zero_init' and getattr(model, 'car', None) is not None and model.car.f_s is not None:
            torch.nn.init.zeros_(model.car.f_s.weight)
            torch.nn.init.zeros_(model.car.f_s.bias)
        graph = getattr(model, 'label_graph', None)
        if name == 'gcn_self_0.95' and graph is not None:  # V's diagonal starts at 95 % self weight, not 80 %
            graph.self_weight = 0.95
            graph.reset_parameters()
        if name == 'fw_no_bias':  # f_w (eq. 4/5) without its bias: e_c = W x_c, no vector shared by every class
            torch.nn.init.zeros_(model.car.f_w.bias)
            model.car.f_w.bias.requires_grad_(False)
        if name == 'random_nodes' and graph is not None:  # seeded random nodes of the word vectors' mean norm
            nodes = graph.node_features
            generator = torch.Generator().manual_seed(1234)
            noise = torch.randn(nodes.shape, generator=generator)
            graph.node_features.copy_(noise / noise.norm(dim=1, keepdim=True) * nodes.norm(dim=1).mean())
        return model

    runs_module.create_model = create
    if name == 'fusion_product':
        CategoryAttention.pool = _product_pool
    try:
        yield
    finally:
        runs_module.create_model = original_create
        CategoryAttention.pool = _ORIGINAL_POOL


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='benchmarks/sa_diagnosis.py', description=__doc__.split('\n')[0])
    p.add_argument('--variants', nargs='+', default=['ref', 'no_ca', 'fs_zero_init', 'fusion_product'],
                   choices=sorted(VARIANTS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--dataset-seed', type=int, default=0)
    p.add_argument('--preset', default='quick', help='Fashion Scenes preset (tiny: a smoke test)')
    p.add_argument('--root', default=None, help='data folder (default: the benchmark cache)')
    p.add_argument('--at-init', action='store_true', help='pointing game of the untrained CAR head per seed')
    p.add_argument('--output', default='benchmark-results/sa-diagnosis')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--zero-init-spatial', action='store_true',
                   help='start every variant from the model default (f_s zero-initialised) instead of PyTorch init')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups = {}
    for name in args.variants:
        row, overrides, _ = VARIANTS[name]
        key = tuple((k, overrides[k]) for k in _CACHE_KEYS if k in overrides)
        groups.setdefault(key, []).append(name)
    for key, names in groups.items():
        cfg = bm.BenchmarkConfig(rows=('car', 'car_no_ca'), seeds=tuple(args.seeds), dataset_seed=args.dataset_seed,
                                 preset=args.preset, root=args.root, epochs=1 if args.preset == 'tiny' else None,
                                 batch_size=4 if args.preset == 'tiny' else None,
                                 overlays=0, bootstrap=0, output=f'{args.output}/cache-{len(key)}', threads=args.threads,
                                 # every variant changes one thing from PyTorch's f_s init (#15) or the default (#24)
                                 zero_init_spatial=args.zero_init_spatial,
                                 **dict(key)).resolved()
        ctx = bm.Context(cfg, bm.prepare_data(cfg), Path(cfg.output), torch.device('cpu'))
        bm.prepare_frozen_trunk(ctx)
        boxes = ctx.test_boxes()
        test_x, test_y = ctx.cache[ctx.spec.test_split]
        if args.at_init:
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = runs_module.create_model(cfg, ctx.spec, bm.ROWS['car'], cfg.oe_topk, cfg.oe_alpha,
                                                 ctx.embeddings, ctx.backbone_name)
                maps = bm.trunk.frozen_trunk_attention(bm.FrozenTrunk(model, cfg.train_stages), test_x)
                print(json.dumps({'variant': 'at_init', 'seed': seed, **bm.pointing_game(maps, test_y.numpy(), boxes)}),
                      flush=True)
            return 0
        for name in names:
            row, overrides, change = VARIANTS[name]
            for seed in args.seeds:
                ctx.cfg = dataclasses.replace(cfg, output=f'{args.output}/{name}', **{
                    k: v for k, v in overrides.items() if k not in _CACHE_KEYS})
                ctx.out = Path(ctx.cfg.output)
                with intervention(change):
                    result = bm.execute(ctx, row, seed, cfg.oe_topk, cfg.oe_alpha, 'table', False)
                stats = dict(result.pointing_game or {})
                print(json.dumps({'variant': name, 'row': row, 'seed': seed, 'grid': list(ctx.feature_grid),
                                  'mAP_interpolated': result.test['mAP_interpolated'],
                                  'hit_rate': stats.get('hit_rate'), 'chance': stats.get('chance'),
                                  'discriminative': stats.get('discriminative'),
                                  'similarity': stats.get('similarity'), 'seconds': result.wall_seconds}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
