"""srdl-timm: SRDL multi-label image recognition as a timm model family.

``import srdl_timm`` registers the ``srdl_*`` architectures with timm::

    import srdl_timm, timm
    model = timm.create_model('srdl_resnet101', num_classes=80)
"""
from .models import SRDL
from .loss import SRDLLoss
from .layers import CategoryAttention, CategoryClassifier, LabelGraph, ObjectErasing

__version__ = '0.1.0'
__all__ = ['SRDL', 'SRDLLoss', 'CategoryAttention', 'CategoryClassifier', 'LabelGraph', 'ObjectErasing']
