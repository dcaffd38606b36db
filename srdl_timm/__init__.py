"""srdl-timm: SRDL multi-label image recognition as a timm model family.

``import srdl_timm`` registers the ``srdl_*`` architectures with timm.
"""
__version__ = '0.1.0'
