"""SRDL model family for timm: ``import srdl_timm`` registers the ``srdl_*`` architectures and their shipped tags."""
import warnings
from typing import List, Optional

from ..utils import PathLike
from .pretrained import manifest_pretrained_cfgs
from .srdl import SRDL, checkpoint_filter_fn

__all__ = ['SRDL', 'checkpoint_filter_fn', 'register_manifest_tags']


def register_manifest_tags(path: Optional[PathLike] = None) -> List[str]:
    """Register the weights of another manifest (default ``$SRDL_WEIGHTS_DIR/manifest.json``, else the shipped
    one) as timm pretrained tags ``'<architecture>.<tag>'``; returns the tags registered."""
    from timm.models import generate_default_cfgs, register_model
    from . import srdl

    base = {}
    for arch, default in srdl.default_cfgs.items():
        cfg = default.cfgs[default.tags[0]].to_dict()
        cfg.pop('description', None)
        base[arch] = cfg
    tags = manifest_pretrained_cfgs(base, path)
    for arch in sorted({name.split('.', 1)[0] for name in tags}):
        default = srdl.default_cfgs[arch]
        merged = {f'{arch}.{name}' if name else arch: cfg for name, cfg in default.cfgs.items()
                  if name and cfg.has_weights}  # static tags with weights stay; an untagged cfg goes
        merged = {**{k: v for k, v in tags.items() if k.split('.', 1)[0] == arch}, **merged}
        srdl.default_cfgs.update(generate_default_cfgs(merged))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "Overwriting <arch> in registry": that is the point
            register_model(getattr(srdl, arch))
    return sorted(tags)
