"""SRDL (Pu et al.): a timm backbone + the CAR head (eqs. 2-6), and object erasing (eqs. 7-10) in training, when
``model(x)`` returns ``(logits, erased_logits)`` for the loss of eqs. 11-13."""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..errors import InputError
from ..labels import (
    LabelEmbeddingSpec, known_label_names, known_label_set, resolve_label_nodes, store_label_names,
    store_label_thresholds)
from ..layers import (ATTENTION_VARIANTS, CategoryAttention, CategoryClassifier, LabelGraph, ObjectErasing,
                      resolve_graph_kind, state_graph_kind)
from ..ops import ATTENTION_IMPLS
from .backbone import (backbone_cfg, backbone_group_matcher, create_backbone, default_out_indices,
                       last_intermediate, probe_feature_shape)
from .pretrained import check_pretrained_weights

__all__ = ['SRDL', 'checkpoint_filter_fn', 'check_graph_kind', 'CLASS_DEPENDENT_KEYS']

_logger = logging.getLogger(__name__)

#: State-dict entries whose shape depends on the number of categories.
CLASS_DEPENDENT_KEYS = (
    'label_graph.node_features', 'label_graph.adjacency', 'label_graph.neighbor_index', 'classifier.weight',
    'classifier.bias',
)


@torch.fx.wrap
def _check_input(x: Tensor, in_chans: int) -> Tensor:
    if x.dim() != 4:
        raise ValueError('SRDL expects a 4-D image batch [B, C, H, W], got a ' + str(x.dim()) + '-D tensor')
    if x.shape[1] != in_chans:
        raise ValueError('SRDL was built for ' + str(in_chans) + ' input channels, got a batch with '
                         + str(x.shape[1]) + ' channels')
    return x


def _check_args(num_classes: int, global_pool: str, label_names: Optional[Sequence[str]], object_erasing: bool,
                use_sa: bool, attention: str, oe_erase: str) -> Optional[List[str]]:
    """Validate :class:`SRDL`'s arguments (a ``ValueError`` naming the argument); returns the label names as str."""
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f'num_classes must be an int >= 0, got {num_classes!r}')
    if global_pool not in ('max', 'avg', ''):
        raise ValueError(f"global_pool must be 'max', 'avg' or '', got {global_pool!r}")
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if num_classes and len(label_names) != num_classes:
            raise ValueError(f'{len(label_names)} label_names given for num_classes={num_classes}')
    if object_erasing and not use_sa:
        raise ValueError('object_erasing needs the spatial attention (use_sa=True): OE erases regions of SA')
    if attention not in ATTENTION_VARIANTS:
        raise ValueError(f'attention must be one of {ATTENTION_VARIANTS}, got {attention!r}')
    if oe_erase not in ('attention', 'features'):
        raise ValueError(f"oe_erase must be 'attention' or 'features', got {oe_erase!r}")
    if oe_erase == 'features' and attention == 'paper':
        raise ValueError("oe_erase='features' needs attention='gated', 'softmax' or 'softmax_gated': eq. 6's "
                         "additive CA term of attention='paper' cannot be erased position by position")
    return label_names


class SRDL(nn.Module):
    """SRDL multi-label classifier: timm backbone + CAR head (+ OE in training).

    Args:
        backbone: timm model name with a spatial feature grid (:mod:`srdl_timm.models.backbone`).
        num_classes: number of categories C; 0 gives pooled image features (timm convention).
        global_pool: pooling of the ``num_classes=0`` / ``pre_logits`` output: 'max' (GMP), 'avg' or '' (map).
        pretrained_backbone: initialise the backbone from its ImageNet weights.
        label_embeddings: node init ``A^0`` of eq. 3 (:func:`srdl_timm.labels.vectors.resolve_label_nodes`).
        label_names: category names, stored in ``pretrained_cfg['label_names']``.
        embed_dim: node width d' when the nodes are random (default 300).
        graph_layers: L in eq. 3 (0 = no GCN).
        graph_kind: ``V`` of eq. 3: 'dense' (the paper's), 'knn' (``C x graph_neighbors``) or 'auto'.
        use_gcn / use_ca / use_sa: ablation switches of Table 6.
        object_erasing, oe_topk, oe_alpha: start with OE on; K and alpha of §3.3.
        attention: 'paper' (eqs. 5-6 as written) or a variant that is not the paper's (``ATTENTION_VARIANTS``).
        oe_erase: 'attention' (the paper: the category's SA) or 'features' (not with ``attention='paper'``).
        attention_impl: kernel for eqs. 5-6 (see ``ops``).
        zero_init_spatial: zero-initialise ``f_s`` of eq. 5 so SA starts at 0.5 everywhere.
        img_size: input size the backbone is built for, where it has one; None = the backbone's default.
        backbone_kwargs: extra kwargs for ``timm.create_model``.
    """

    def __init__(
            self,
            backbone: str = 'resnet101.tv_in1k',
            num_classes: int = 80,
            in_chans: int = 3,
            drop_rate: float = 0.,
            global_pool: str = 'max',
            pretrained_backbone: bool = False,
            label_embeddings: LabelEmbeddingSpec = None,
            label_names: Optional[Sequence[str]] = None,
            embed_dim: Optional[int] = None,
            graph_layers: int = 2,
            graph_kind: str = 'auto',
            graph_neighbors: int = 16,
            use_gcn: bool = True,
            use_ca: bool = True,
            use_sa: bool = True,
            object_erasing: bool = False,
            oe_topk: int = 3,
            oe_alpha: float = 0.5,
            attention: str = 'paper',
            oe_erase: str = 'attention',
            attention_impl: str = 'auto',
            zero_init_spatial: bool = True,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            drop_path_rate: Optional[float] = None,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        label_names = _check_args(num_classes, global_pool, label_names, object_erasing, use_sa, attention, oe_erase)
        self.attention = attention
        self.oe_erase = oe_erase
        self.backbone_name = backbone
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.embed_dim = embed_dim or 300
        self._embed_dim_arg = embed_dim
        self.label_embeddings_source = 'none'
        self.graph_layers = graph_layers if use_gcn else 0
        self._graph_kind_arg = graph_kind
        self.graph_neighbors = graph_neighbors
        self.use_gcn = use_gcn
        self.use_ca = use_ca
        self.use_sa = use_sa
        self.attention_impl = attention_impl
        self.zero_init_spatial = zero_init_spatial
        self.object_erasing = object_erasing
        self.label_names = label_names
        self.grad_checkpointing = False
        dd = {'device': device, 'dtype': dtype}

        bb_kwargs = dict(backbone_kwargs or {})
        if img_size is None:
            img_size = bb_kwargs.pop('img_size', None)
        self.img_size = img_size
        if drop_path_rate is not None:
            bb_kwargs.setdefault('drop_path_rate', drop_path_rate)
        self.backbone, self.feature_grid, _ = create_backbone(
            backbone, in_chans=in_chans, img_size=img_size, pretrained=pretrained_backbone, **dd, **bb_kwargs)
        self.num_features = self.head_hidden_size = self.feature_grid.num_features
        backbone_info = getattr(self.backbone, 'feature_info', None) or []
        self.feature_info = [dict(info, module='backbone.' + info['module']) for info in backbone_info
                             if isinstance(info, dict) and 'module' in info]
        #: total stride of the feature map F (eq. 1): the grid of an H x W input is about (H / it, W / it);
        #: exactly :meth:`feature_grid_size`
        self.feature_reduction = self.feature_grid.reduction

        self.head_drop = nn.Dropout(drop_rate)
        self.object_eraser = ObjectErasing(oe_topk, oe_alpha)
        self.num_classes = 0
        self.label_graph = None
        self.car = None
        self.classifier = nn.Identity()
        self._build_head(num_classes, label_embeddings, **dd)

    def _build_head(self, num_classes: int, label_embeddings: LabelEmbeddingSpec = None,
                    device=None, dtype=None) -> None:
        self.num_classes = num_classes
        self.graph_kind = resolve_graph_kind(self._graph_kind_arg, num_classes)
        if num_classes == 0:
            self.label_graph = None
            self.car = None
            self.classifier = nn.Identity()
            return
        needs_nodes = self.use_ca or self.use_sa
        if needs_nodes:
            nodes, source, names = resolve_label_nodes(
                label_embeddings, num_classes, self._embed_dim_arg, self.label_names)
            self.label_embeddings_source = source
            if self.label_names is None and names is not None:
                self.label_names = list(names)
            self.embed_dim = nodes.shape[1]
            neighbors = self.graph_neighbors if self.graph_kind == 'knn' else None
            graph = LabelGraph(nodes, num_layers=self.graph_layers, neighbors=neighbors)
            self.label_graph = graph.to(device=device, dtype=dtype)
        else:
            self.label_graph = None
            if self.label_names is None:
                self.label_names = known_label_names(num_classes)
        self.car = CategoryAttention(
            self.num_features, self.embed_dim, use_ca=self.use_ca, use_sa=self.use_sa,
            attention_impl=self.attention_impl, zero_init_spatial=self.zero_init_spatial,
            attention=self.attention).to(device=device, dtype=dtype)
        self.classifier = CategoryClassifier(self.num_features, num_classes).to(device=device, dtype=dtype)
        for module in (self.label_graph, self.car, self.classifier):
            if module is not None:
                module.train(self.training)

    @torch.jit.ignore
    def feature_grid_size(self, img_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
        """``(h, w)`` of the feature map F for an input of ``img_size`` (one meta-device pass: no compute)."""
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        _, height, width = probe_feature_shape(self.backbone, self.feature_grid, self.in_chans, size)
        return height, width

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        stem, blocks = backbone_group_matcher(self.backbone, coarse=coarse)
        return dict(stem=stem, blocks=blocks + [(r'^(?:label_graph|car|classifier)\.', (10 ** 9,))])  # head last

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, 'no_weight_decay') else set()
        return {'backbone.' + name for name in inner}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    @torch.jit.ignore
    def reset_classifier(
            self, num_classes: int, global_pool: Optional[str] = None,
            label_embeddings: LabelEmbeddingSpec = None, label_names: Optional[Sequence[str]] = None,
    ) -> None:
        """Rebuild the category head (label graph nodes, attention, classifier) for ``num_classes``."""
        if global_pool is not None:
            if global_pool not in ('max', 'avg', ''):
                raise ValueError(f"global_pool must be 'max', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        if label_names is not None:
            self.label_names = [str(n) for n in label_names]
        elif self.label_names is not None and len(self.label_names) != num_classes:
            self.label_names = None
        param = next(self.backbone.parameters())
        self._embed_dim_arg = self.embed_dim  # a new head keeps the node width unless new embeddings are given
        self._build_head(num_classes, label_embeddings, device=param.device, dtype=param.dtype)
        store_label_names(self, self.label_names)

    @torch.jit.ignore
    def set_object_erasing(self, enable: bool = True) -> None:
        """Switch OE (§3.3) on or off; it only ever acts in training mode."""
        if enable and not self.use_sa:
            raise ValueError('object erasing needs the spatial attention (use_sa=True)')
        self.object_erasing = enable

    @torch.jit.ignore
    def set_attention_impl(self, impl: str) -> None:
        """Choose the eqs. 5-6 kernels: 'auto' (measured choice), 'reference' (export), 'chunked', 'compiled' (CPU) or 'triton' (CUDA)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f'attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}')
        self.attention_impl = impl
        if self.car is not None:
            self.car.attention_impl = impl

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Backbone intermediates (timm's feature API); with ``intermediates_only=False`` also the final map."""
        x = _check_input(x, self.in_chans)
        return self.backbone.forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only)

    @torch.jit.ignore
    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        take_indices = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone feature map ``F`` of eq. 1, ``[B, d, h, w]`` (a token backbone's patch grid; see ``feature_grid``)."""
        x = _check_input(x, self.in_chans)
        if self.feature_grid.from_intermediates:
            return self._last_intermediate(x)
        if not torch.jit.is_scripting():
            if isinstance(x, torch.fx.Proxy):
                return self._traced_features(x)
        return self.feature_grid(self.backbone.forward_features(x), x.shape[-2], x.shape[-1])

    @torch.jit.unused
    def _traced_features(self, x: Tensor) -> Tensor:
        """Under torch.fx the backbone is called as a module (its ``forward`` being ``forward_features`` for the
        call), so the tracer wraps the not-traceable helpers of timm's file as when it traces the backbone alone."""
        self.backbone.forward = self.backbone.forward_features
        try:
            return self.feature_grid(self.backbone(x), x.shape[-2], x.shape[-1])
        finally:
            del self.backbone.forward

    @torch.jit.unused
    def _last_intermediate(self, x: Tensor) -> Tensor:
        return last_intermediate(self.backbone, x)

    def _pool_image(self, x: Tensor) -> Tensor:
        if self.global_pool == 'max':
            return x.amax(dim=(2, 3))
        if self.global_pool == 'avg':
            return x.mean(dim=(2, 3))
        return x

    def forward_category_features(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """CAR on a feature map ``[B, d, h, w]``: ``(f_c [B, C, d], SA [B, C, h*w] | None, CA [B, C, d] | None)``."""
        assert self.car is not None, 'no category head: the model was built or reset with num_classes=0'
        feat = x.flatten(2).transpose(1, 2)  # [B, P, d]
        nodes = self.label_graph() if self.label_graph is not None else None
        return self.car(feat, nodes, self.num_classes)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Logits ``[B, C]`` from a feature map; ``pre_logits`` gives the pooled image feature ``[B, d]``."""
        if pre_logits or self.num_classes == 0:
            return self._pool_image(x)
        if not torch.jit.is_scripting():
            lean = self._lean_logits(x.flatten(2).transpose(1, 2))
            if lean is not None:
                return lean[0]
        features, _, _ = self.forward_category_features(x)
        return self.classifier(self.head_drop(features))

    @torch.jit.unused
    def _lean_logits(self, feat: Tensor, nodes: Optional[Tensor] = None) -> Optional[Tuple[Tensor, Tensor]]:
        """Training logits ``[B, C]`` and SA from ``feat`` ``[B, P, d]`` through the fused eqs. 4, 6 and 2
        (:meth:`CategoryAttention.category_logits`: the pooled ``f_c`` is not kept for the backward), or None where
        that path does not apply (not the paper's attention, an active dropout, no gradient, 16-bit, ...)."""
        classifier = self.classifier
        if isinstance(feat, torch.fx.Proxy) or self.car is None or self.label_graph is None \
                or not isinstance(classifier, CategoryClassifier):
            return None
        if self.training and self.head_drop.p > 0:
            return None
        weight = classifier.weight.to(feat.dtype)
        if not self.car.fused_logits_apply(feat, weight):
            return None
        nodes = self.label_graph() if nodes is None else nodes
        logits, sa = self.car.category_logits(feat, nodes, weight)
        return logits + classifier.bias.to(feat.dtype), sa

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        x = self.forward_features(x)
        if self.object_erasing and self.training and self.num_classes > 0 and not torch.jit.is_scripting():
            return self.forward_head_erasing(x)
        return self.forward_head(x)

    @torch.jit.unused
    def forward_head_erasing(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(logits, erased_logits)`` from a feature map: the training forward with OE (eqs. 7-10)."""
        out = self.forward_erasing(x, keep_features=False)
        return out['logits'], out['erased_logits']

    @torch.jit.unused
    def forward_erasing(self, x: Tensor, keep_features: bool = True) -> Dict[str, Tensor]:
        """The OE pass of :meth:`forward_head_erasing` with its intermediates, for analysis. ``keep_features=False``
        lets training use the fused eqs. 4/6/2 (no ``'features'`` in the result then, and less memory)."""
        assert self.car is not None and isinstance(self.classifier, CategoryClassifier)
        height, width = x.shape[-2:]
        feat = x.flatten(2).transpose(1, 2)
        nodes = self.label_graph() if self.label_graph is not None else None
        lean = None if keep_features else self._lean_logits(feat, nodes)
        if lean is not None:
            (logits, sa), features = lean, None
        else:
            features, sa, _ = self.car(feat, nodes, self.num_classes)
            logits = self.classifier(self.head_drop(features))
        assert sa is not None
        class_index, erased_sa, region = self.object_eraser(logits, sa, height, width)
        if self.oe_erase == 'features':
            assert nodes is not None
            erased_features = self.car.erased_features(feat, nodes, erased_sa, class_index, region)
        else:
            # CA of the erased categories recomputed (eq. 4), not gathered: no [B, C, d] gradient buffer at the peak
            erased_ca = self.car.selected_channel_attention(feat, nodes, class_index)  # None without CA
            erased_features = self.car.pool(feat, erased_sa, erased_ca)
        erased_selected = self.classifier(self.head_drop(erased_features), class_index)
        erased_logits = logits.scatter(1, class_index, erased_selected)
        out = {'logits': logits, 'sa': sa, 'class_index': class_index, 'region': region, 'erased_sa': erased_sa,
               'erased_features': erased_features, 'erased_logits': erased_logits}
        if features is not None:
            out['features'] = features
        return out

    @torch.jit.ignore
    def attention_maps(self, x: Tensor) -> Dict[str, Tensor]:
        """Logits and attentions for explanation (Figure 5): SA as ``[B, C, h, w]`` maps, CA ``[B, C, d]``."""
        feat_map = self.forward_features(x)
        height, width = feat_map.shape[-2:]
        features, sa, ca = self.forward_category_features(feat_map)
        out = {'logits': self.classifier(features), 'features': features}
        if sa is not None:
            out['spatial_attention'] = sa.unflatten(-1, (height, width))
        if ca is not None:
            out['channel_attention'] = ca
        return out


def check_graph_kind(state_dict: Dict[str, Tensor], model: SRDL) -> None:
    """Raise an InputError if ``state_dict`` holds another kind of label graph ``V`` than ``model``."""
    kind = state_graph_kind(state_dict)
    nodes = state_dict.get('label_graph.node_features')
    own = state_graph_kind(model.state_dict())
    if kind and own and kind != own and nodes is not None and nodes.shape[0] == model.num_classes:
        raise InputError(f"the checkpoint's label graph V (eq. 3) is {kind} but the model was built with a {own} "
                         f"one: pass graph_kind='{kind}' (the kind the config beside the weights records)")


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: SRDL) -> Dict[str, Tensor]:
    """Drop category-dependent tensors whose shape differs from ``model`` (a deliberate num_classes change)."""
    check_graph_kind(state_dict, model)
    model_state = model.state_dict()
    out = {}
    dropped = []
    for key, value in state_dict.items():
        if key in CLASS_DEPENDENT_KEYS:
            if key not in model_state or model_state[key].shape != value.shape:
                dropped.append(key)
                continue
        out[key] = value
    nodes = state_dict.get('label_graph.node_features')
    if nodes is not None and nodes.ndim == 2 and nodes.shape[1] != model.embed_dim:
        # not a class-count change: the node width is architecture (graph weights and CAR's f_w follow it)
        raise InputError(
            f'the checkpoint\'s label-graph nodes are {nodes.shape[1]}-d but the model was built with '
            f'embed_dim={model.embed_dim}: pass embed_dim={nodes.shape[1]}, or load the weights with the config '
            'beside them (srdl_timm.loading.load_model, or local-dir:/hf-hub: of a srdl-publish folder)')
    bias = state_dict.get('classifier.bias')
    cfg_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
    if bias is not None and bias.shape[0] == model.num_classes and cfg_classes not in (None, model.num_classes):
        # timm's load_pretrained drops the classifier whenever num_classes != pretrained_cfg['num_classes']
        _logger.warning(
            'the weights hold a %d-class classifier, as asked (num_classes=%d), but the pretrained cfg says %d '
            'classes, so timm re-initialises the classifier at random: to keep it, pass '
            'pretrained_cfg_overlay=dict(file=..., num_classes=%d), or load with the config beside the weights '
            '(srdl_timm.loading.load_model / local-dir:)', bias.shape[0], model.num_classes, cfg_classes,
            model.num_classes)
    if dropped:
        _logger.info('Category head re-initialised; dropped from checkpoint: %s', ', '.join(dropped))
        if 'label_graph.node_features' in dropped and model.label_embeddings_source == 'random':
            _logger.warning(
                'SRDL label-graph nodes initialised from a seeded random normal: num_classes=%d differs from the '
                'checkpoint\'s %d classes and no label_embeddings were given. Pass label_embeddings= (word vectors '
                'of the new label names) for meaningful nodes.', model.num_classes, nodes.shape[0])
    return out


def _create_srdl(variant: str, pretrained: bool = False, model_args: Optional[Dict[str, Any]] = None,
                 **kwargs) -> SRDL:
    # a backbone other than the variant's: the default cfg's pool size is recomputed for it
    other_backbone = any(key in kwargs for key in ('backbone', 'img_size', 'backbone_kwargs'))
    kwargs = dict(model_args or {}, **kwargs)
    thresholds = kwargs.pop('label_thresholds', None)  # per-class decision thresholds: not architecture
    if pretrained:
        # models/pretrained.py: the weight file (checked) and the arguments those weights were built with
        kwargs = check_pretrained_weights(variant, dict(kwargs, label_thresholds=thresholds))
        thresholds = kwargs.pop('label_thresholds')
        if kwargs.get('label_embeddings') is None and not known_label_set(
                kwargs.get('num_classes', -1), kwargs.get('label_names')):
            kwargs['label_embeddings'] = 'random'  # placeholders: the weights hold the nodes
    feature_cfg: Dict[str, Any] = dict(feature_cls='getter')
    if kwargs.get('features_only') and 'out_indices' not in kwargs:
        feature_cfg['out_indices'] = default_out_indices(kwargs['backbone'], kwargs.get('backbone_kwargs'))
    model = build_model_with_cfg(
        SRDL,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        pretrained_strict=False,
        feature_cfg=feature_cfg,
        **kwargs,
    )
    inner = getattr(model, 'model', model)  # features_only wraps the model
    if isinstance(inner, SRDL):
        # the head's names go to pretrained_cfg['label_names'] (timm's, from a config, kept if they fit the head)
        inner.label_names = store_label_names(model, inner.label_names, inner.num_classes)
        store_label_thresholds(inner, thresholds)
        # first conv, pool size and (fixed-size backbones) input size follow the backbone actually chosen
        fitted = backbone_cfg(inner.backbone, inner.feature_grid, inner.in_chans,
                              inner.pretrained_cfg['input_size'] if other_backbone else None)
        for c in {id(c): c for c in (model.pretrained_cfg, inner.pretrained_cfg)}.values():
            c.update({k: v for k, v in fitted.items() if k != 'first_conv' or 'first_conv' in c})
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 80,
        'input_size': (3, 448, 448),
        'pool_size': (14, 14),
        'crop_pct': 1.0,
        'crop_mode': 'squash',
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'backbone.conv1',
        'classifier': 'classifier',
        'license': 'apache-2.0',
        'paper_name': 'Semantic Representation and Dependency Learning for Multi-Label Image Recognition',
        **kwargs,
    }


_LITE0 = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation='bicubic', first_conv='backbone.conv_stem')
#: the ViT backbones' own preprocessing (their pretrained_cfg: mean/std 0.5, bicubic; tests/test_srdl.py checks it)
_VIT = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation='bicubic', first_conv='backbone.patch_embed.proj')

#: Pretrained tags '<arch>.<tag>', declared statically as in timm; weights/manifest.json records each weight.
default_cfgs = generate_default_cfgs({
    'srdl_resnet101': _cfg(),
    'srdl_resnet50': _cfg(),
    'srdl_resnet18': _cfg(),
    'srdl_efficientnet_lite0.fashion_scenes': _cfg(
        file='srdl_efficientnet_lite0.fashion_scenes.safetensors', num_classes=10,
        input_size=(3, 128, 128), pool_size=(4, 4), crop_pct=1.0, crop_mode='squash',
        label_names=('t-shirt', 'trousers', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
                     'ankle boot'),
        description='SRDL weights trained on Fashion Scenes v1.0 (preset quick, seed 0): Fashion-MNIST product photos '
                    'pasted onto scikit-image photographs, 10 clothing classes only (weights/manifest.json)',
        **_LITE0),
    'srdl_vit_base_patch16_448': _cfg(pool_size=(28, 28), **_VIT),
    'srdl_test_resnet': _cfg(input_size=(3, 160, 160), pool_size=(5, 5), num_classes=10, first_conv='backbone.conv1.0'),
    'srdl_test_vit': _cfg(input_size=(3, 160, 160), pool_size=(10, 10), num_classes=10, **_VIT),
})


@register_model
def srdl_resnet101(pretrained: bool = False, **kwargs) -> SRDL:
    """SRDL with a ResNet-101 backbone, the paper's configuration (448 px, ``resnet101.tv_in1k``)."""
    model_args = dict(backbone='resnet101.tv_in1k')
    return _create_srdl('srdl_resnet101', pretrained=pretrained, model_args=model_args, **kwargs)


@register_model
def srdl_resnet50(pretrained: bool = False, **kwargs) -> SRDL:
    """SRDL with a ResNet-50 backbone (torchvision's ImageNet weights, ``resnet50.tv_in1k``, as for ResNet-101)."""
    model_args = dict(backbone='resnet50.tv_in1k')
    return _create_srdl('srdl_resnet50', pretrained=pretrained, model_args=model_args, **kwargs)


@register_model
def srdl_resnet18(pretrained: bool = False, **kwargs) -> SRDL:
    """SRDL with a ResNet-18 backbone (d = 512; torchvision's ImageNet weights, ``resnet18.tv_in1k``)."""
    model_args = dict(backbone='resnet18.tv_in1k')
    return _create_srdl('srdl_resnet18', pretrained=pretrained, model_args=model_args, **kwargs)


@register_model
def srdl_efficientnet_lite0(pretrained: bool = False, **kwargs) -> SRDL:
    """SRDL with a TF EfficientNet-Lite0 backbone, whose ImageNet weights are available offline."""
    model_args = dict(backbone='tf_efficientnet_lite0')
    return _create_srdl('srdl_efficientnet_lite0', pretrained=pretrained, model_args=model_args, **kwargs)


@register_model
def srdl_vit_base_patch16_448(pretrained: bool = False, **kwargs) -> SRDL:
    """SRDL on ViT-B/16 at 448 px: F is the 28 x 28 grid of patch tokens."""
    model_args = dict(backbone='vit_base_patch16_224.augreg2_in21k_ft_in1k', img_size=448)
    return _create_srdl('srdl_vit_base_patch16_448', pretrained=pretrained, model_args=model_args, **kwargs)


@register_model
def srdl_test_resnet(pretrained: bool = False, **kwargs) -> SRDL:
    """Tiny SRDL on timm's ``test_resnet`` backbone, for tests and smoke runs."""
    model_args = dict(backbone='test_resnet', embed_dim=16)
    return _create_srdl('srdl_test_resnet', pretrained=pretrained, model_args=model_args, **kwargs)


@register_model
def srdl_test_vit(pretrained: bool = False, **kwargs) -> SRDL:
    """Tiny SRDL on timm's ``test_vit`` backbone (a 10 x 10 patch grid at 160 px), for tests and smoke runs."""
    model_args = dict(backbone='test_vit', embed_dim=16)
    return _create_srdl('srdl_test_vit', pretrained=pretrained, model_args=model_args, **kwargs)
