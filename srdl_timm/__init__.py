"""srdl-timm: SRDL multi-label image recognition as a timm model family.

``import srdl_timm`` registers the ``srdl_*`` architectures and their pretrained tags with timm (also those of
``$SRDL_WEIGHTS_DIR/manifest.json``); :func:`srdl_timm.loading.load_model` loads trained weights for inference.
"""
import os as _os

from .models import SRDL, register_manifest_tags
from .loss import SRDLLoss
from .layers import CategoryAttention, CategoryClassifier, LabelGraph, ObjectErasing

if _os.environ.get('SRDL_WEIGHTS_DIR'):
    register_manifest_tags()

__version__ = '0.1.0'
__all__ = ['SRDL', 'SRDLLoss', 'CategoryAttention', 'CategoryClassifier', 'LabelGraph', 'ObjectErasing',
           'register_manifest_tags']
