from .srdl import SRDL, checkpoint_filter_fn
