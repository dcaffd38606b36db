"""srdl-timm: SRDL multi-label image recognition as a timm model family.

``import srdl_timm`` registers the ``srdl_*`` architectures and their shipped pretrained tags with timm::

    import srdl_timm, timm
    model = timm.create_model('srdl_resnet101')  # 80 classes: COCO names, shipped COCO GloVe label nodes
    model = timm.create_model('srdl_efficientnet_lite0.fashion_scenes', pretrained=True)

With ``SRDL_WEIGHTS_DIR`` set, the weights listed in that folder's ``manifest.json`` are registered as tags too.
Loading trained weights for inference: :func:`srdl_timm.loading.load_model`.
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
