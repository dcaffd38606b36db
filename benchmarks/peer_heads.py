"""Peer multi-label heads on a timm backbone: the heads a user would pick instead of SRDL.

These are baselines for the benchmark (``benchmarks/run_offline.py``) and the timing table
(``benchmarks/timing.py``), not part of the ``srdl_timm`` package. Each head sits on the same feature map
``[B, d, h, w]`` as SRDL -- the backbone adapter's (:mod:`srdl_timm.models.backbone`: a CNN's map, a ViT's patch
grid, Swin's NHWC map permuted) -- and returns logits ``[B, C]``. Every choice is written down beside the code that
makes it.

``ml_decoder`` -- ML-Decoder (Ridnik et al., WACV 2023, arXiv:2111.12933), exactly as timm ships it:
    ``timm.layers.ml_decoder.MLDecoder(num_classes, initial_num_features=d)`` with timm's defaults (1 decoder
    layer, 768-d embedding, 8 attention heads, feed-forward 2048, dropout 0.1, ``min(100, C)`` frozen random
    queries = one query per class when C <= 100, group fully-connected output). Its query embedding is frozen
    (``requires_grad=False``) by timm's code. One compatibility fix, written down: with torch >= 2.x
    ``nn.TransformerDecoder.forward`` reads ``layers[0].self_attn`` and passes ``tgt_is_causal`` to each
    layer, which timm 1.0.31's ``TransformerDecoderLayerOptimal`` lacks (``AttributeError``: timm's MLDecoder
    does not run on torch 2.14 as shipped). :func:`timm_ml_decoder` replaces the ``decoder`` container by
    :class:`_DecoderStack`, which applies the *same* layer modules in the same order (same parameter names);
    timm's ``MLDecoder.forward`` then runs unchanged.

``csra`` -- CSRA, class-specific residual attention (Zhu & Wu, ICCV 2021, arXiv:2108.02456). Per head: a
    1x1 conv classifier without bias gives class scores per position, divided by the L2 norm of that class's
    weight; the logit is ``mean_p s_p + lam * sum_p softmax_p(T s)_p s_p`` (``T = inf``: max over positions).
    Defaults = the authors' released COCO ResNet-101 setting (README of github.com/Kevinz-code/CSRA,
    83.3 mAP): 4 heads with temperatures T = 1, 2, 4, inf and lam = 0.5; their VOC setting is 1 head, T = 1,
    lam = 0.1 (``num_heads=1, lam=0.1``). Heads' logits are summed, as in the authors' ``MHA``.

``ml_gcn`` -- ML-GCN's classifier (Chen et al., CVPR 2019, arXiv:1904.03582): image feature = global max
    pooling of the map (d); a 2-layer GCN maps the label word vectors ``[C, d']`` through ``d' -> 1024 -> d``
    (LeakyReLU 0.2 between the layers, no bias, as the authors' code) to one classifier vector per class;
    logits = ``W x``. The adjacency is :func:`ml_gcn_adjacency` of the training labels (paper eqs. 6-8,
    tau = 0.4, p = 0.2). Deviations, written down: the authors' code re-weights with 0.25 over column sums,
    keeps an identity of 1 and then normalises ``D^-1/2 A^T D^-1/2``; we use the paper's equations, whose
    rows already sum to 1 (so the normalisation is the identity). Word vectors: the paper uses GloVe-300; the
    offline benchmark passes the GloVe 6B-50d vectors SRDL's label graph gets.

Public API: :data:`PEER_HEADS`, :func:`create_peer_model`, :func:`ml_gcn_adjacency`, :class:`PeerModel`,
:class:`CSRAHead`, :class:`MLGCNHead`.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers.ml_decoder import MLDecoder
from torch import Tensor, nn

from srdl_timm.models.backbone import FeatureGrid, create_backbone, feature_map

__all__ = ['PEER_HEADS', 'PeerModel', 'timm_ml_decoder', 'CSRAHead', 'MLGCNHead', 'ml_gcn_adjacency', 'create_peer_model']

_logger = logging.getLogger(__name__)

PEER_HEADS = ('ml_decoder', 'csra', 'ml_gcn')

#: CSRA's temperature per number of heads (authors' ``MHA.temp_settings``; 99 there = inf = max pooling)
CSRA_TEMPERATURES = {1: (1.0,), 2: (1.0, math.inf), 4: (1.0, 2.0, 4.0, math.inf), 6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
                     8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf)}


class _DecoderStack(nn.Module):
    """``nn.TransformerDecoder`` without its torch-version-specific checks: ``layers`` applied in order."""

    def __init__(self, decoder: nn.TransformerDecoder):
        super().__init__()
        self.layers = decoder.layers
        self.norm = decoder.norm

    def forward(self, tgt: Tensor, memory: Tensor) -> Tensor:
        for layer in self.layers:
            tgt = layer(tgt, memory)
        return tgt if self.norm is None else self.norm(tgt)


def timm_ml_decoder(num_classes: int, num_features: int, **kwargs: Any) -> MLDecoder:
    """timm's ``MLDecoder`` with its defaults, made to run on current torch (see the module docstring)."""
    head = MLDecoder(num_classes, initial_num_features=num_features, **kwargs)
    head.decoder = _DecoderStack(head.decoder)
    return head


class CSRAHead(nn.Module):
    """CSRA (Zhu & Wu, ICCV 2021): sum over heads of ``mean_p s + lam * attention-pooled s`` per class.

    Args:
        num_features: d of the feature map.
        num_classes: C.
        num_heads: 1, 2, 4, 6 or 8 (temperatures from :data:`CSRA_TEMPERATURES`).
        lam: weight of the class-specific attention term (lambda).
    """

    def __init__(self, num_features: int, num_classes: int, num_heads: int = 4, lam: float = 0.5):
        super().__init__()
        if num_heads not in CSRA_TEMPERATURES:
            raise ValueError(f'csra num_heads must be one of {sorted(CSRA_TEMPERATURES)}, got {num_heads}')
        self.temperatures = CSRA_TEMPERATURES[num_heads]
        self.lam = lam
        self.heads = nn.ModuleList(nn.Conv2d(num_features, num_classes, 1, bias=False) for _ in self.temperatures)

    def forward(self, x: Tensor) -> Tensor:
        logits = x.new_zeros(x.shape[0], self.heads[0].out_channels)
        for conv, temperature in zip(self.heads, self.temperatures):
            norm = conv.weight.flatten(1).norm(dim=1).view(1, -1, 1)
            score = conv(x).flatten(2) / norm  # [B, C, P]
            base = score.mean(dim=2)
            if math.isinf(temperature):
                attended = score.amax(dim=2)
            else:
                attended = (score * torch.softmax(score * temperature, dim=2)).sum(dim=2)
            logits = logits + base + self.lam * attended
        return logits

    def extra_repr(self) -> str:
        return f'temperatures={self.temperatures}, lam={self.lam}'


def ml_gcn_adjacency(targets: Any, tau: float = 0.4, p: float = 0.2) -> Tensor:
    """ML-GCN's re-weighted, thresholded correlation matrix from training labels (Chen et al. 2019, eqs. 6-8).

    ``M_ij`` = images with labels i and j, ``N_i`` = images with label i; ``P_ij = M_ij / N_i`` = P(j | i).
    Binarised: ``A_ij = 1`` if ``P_ij >= tau`` (i != j; the diagonal is not thresholded). Re-weighted:
    ``A'_ij = p * A_ij / sum_{k != i} A_ik`` for i != j and ``A'_ii = 1 - p``. Every row sums to 1, so the GCN's
    normalisation is the identity and ``A'`` is used as is. A class without any neighbour (or never seen)
    keeps ``A'_ii = 1`` (the paper's formula divides by zero there; we keep the node's own features).

    Args:
        targets: ``[N, C]`` training labels (1 present; 0 or -1 not counted as present).
        tau: threshold on the conditional probability.
        p: weight given to the neighbours.
    Returns:
        float32 ``[C, C]``; row i holds the weights node i aggregates from its neighbours j.
    """
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    if y.ndim != 2:
        raise ValueError(f'ml_gcn_adjacency: targets must be [N, C], got shape {tuple(y.shape)}')
    if not 0 < tau <= 1 or not 0 <= p < 1:
        raise ValueError(f'ml_gcn_adjacency: need 0 < tau <= 1 and 0 <= p < 1, got tau={tau}, p={p}')
    present = (y == 1).to(torch.float64)
    counts = present.T @ present  # M, with N_i on the diagonal
    n = counts.diagonal().clone()
    conditional = counts / n.clamp(min=1).unsqueeze(1)
    eye = torch.eye(y.shape[1], dtype=torch.bool)
    binary = (conditional >= tau) & ~eye & (n > 0).unsqueeze(1)
    degree = binary.sum(dim=1, keepdim=True).to(torch.float64)
    out = torch.where(binary, p / degree.clamp(min=1), torch.zeros_like(conditional))
    out = out + torch.diag(torch.where(degree[:, 0] > 0, 1.0 - p, 1.0))
    return out.float()


class MLGCNHead(nn.Module):
    """ML-GCN's classifier (Chen et al. 2019): GMP image feature times GCN-produced class vectors.

    Args:
        num_features: d (the classifier vectors' width).
        label_embeddings: word vectors ``[C, d']`` (a buffer: input to the GCN, not trained, as in the paper).
        adjacency: ``[C, C]`` from :func:`ml_gcn_adjacency` (a buffer).
        hidden: width of the first GCN layer (1024 in the paper).
    """

    def __init__(self, num_features: int, label_embeddings: Tensor, adjacency: Tensor, hidden: int = 1024):
        super().__init__()
        num_classes, embed_dim = label_embeddings.shape
        if adjacency.shape != (num_classes, num_classes):
            raise ValueError(f'ml_gcn adjacency must be [{num_classes}, {num_classes}], got {tuple(adjacency.shape)}')
        self.register_buffer('label_embeddings', label_embeddings.float().clone())
        self.register_buffer('adjacency', adjacency.float().clone())
        # GraphConvolution of the authors' code: weight uniform(+-1/sqrt(out)), no bias
        self.weight1 = nn.Parameter(torch.empty(embed_dim, hidden))
        self.weight2 = nn.Parameter(torch.empty(hidden, num_features))
        for w in (self.weight1, self.weight2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def class_vectors(self) -> Tensor:
        """``[C, d]`` classifiers: ``A' LeakyReLU(A' X W1) W2``."""
        h = F.leaky_relu(self.adjacency @ (self.label_embeddings @ self.weight1), 0.2)
        return self.adjacency @ (h @ self.weight2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.amax(dim=(2, 3))  # global max pooling, as the paper
        return pooled @ self.class_vectors().to(pooled.dtype).T


class PeerModel(nn.Module):
    """A timm backbone's feature map (``feature_grid`` of :mod:`srdl_timm.models.backbone`) followed by one peer
    head; ``forward(x) -> logits [B, C]``.

    Exposes ``backbone``, ``backbone_name``, ``feature_grid``, ``in_chans``, ``num_classes``, ``num_features``,
    ``forward_features`` and ``forward_head`` like the SRDL models, so the benchmark's trainers and timing
    treat both the same way.
    """

    def __init__(self, head_name: str, backbone: nn.Module, backbone_name: str, feature_grid: FeatureGrid,
                 head: nn.Module, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.head_name = head_name
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.feature_grid = feature_grid
        self.head = head
        self.num_classes = num_classes
        self.num_features = self.feature_grid.num_features
        self.in_chans = in_chans

    def forward_features(self, x: Tensor) -> Tensor:
        return feature_map(self.backbone, self.feature_grid, x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if pre_logits:
            return x.amax(dim=(2, 3))
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _embeddings(label_embeddings: Any, num_classes: int, label_names: Optional[Sequence[str]]) -> Tensor:
    if label_embeddings is None:
        _logger.warning('ml_gcn: no label_embeddings given; using a seeded random normal [%d, 300] '
                        '(fine for timing, not for accuracy)', num_classes)
        return torch.randn(num_classes, 300, generator=torch.Generator().manual_seed(0))
    if isinstance(label_embeddings, str):
        from srdl_timm.labels import label_vectors
        label_embeddings = label_vectors(label_embeddings, label_names).vectors
    array = torch.as_tensor(np.asarray(label_embeddings, dtype=np.float32))
    if array.ndim != 2 or array.shape[0] != num_classes:
        raise ValueError(f'ml_gcn label_embeddings must be [num_classes={num_classes}, d], got {tuple(array.shape)}')
    return array


def create_peer_model(name: str, backbone: str = 'resnet101', num_classes: int = 80, *,
                      pretrained_backbone: bool = False, label_embeddings: Any = None, adjacency: Any = None,
                      **kwargs: Any) -> nn.Module:
    """Build ``backbone`` + the peer head ``name`` (one of :data:`PEER_HEADS`).

    Args:
        name: 'ml_decoder', 'csra' or 'ml_gcn'.
        backbone: timm model name: any backbone SRDL takes (:func:`srdl_timm.models.backbone.create_backbone`).
        num_classes: C.
        pretrained_backbone: ImageNet weights (offline ones for EfficientNet-Lite0, as SRDL).
        label_embeddings: ml_gcn only: ``[C, d']`` word vectors, or a source name understood by
            ``srdl_timm.labels.label_vectors`` (with ``label_names``); None = seeded random 300-d.
        adjacency: ml_gcn only: ``[C, C]`` from :func:`ml_gcn_adjacency`; None = identity (no label
            correlation; for timing only).
        kwargs: ``in_chans``, ``label_names``, ``img_size`` (as SRDL's), ``backbone_kwargs`` (e.g.
            ``{'output_stride': 8}``); csra: ``num_heads`` (4), ``lam`` (0.5); ml_gcn: ``hidden`` (1024);
            ml_decoder: ``num_of_groups`` (-1), ``decoder_embedding`` (768) passed to timm's ``MLDecoder``.
    Raises:
        ValueError: an unknown head name or option, embeddings/adjacency of the wrong shape, or a backbone without a
            spatial grid.
    """
    if name not in PEER_HEADS:
        raise ValueError(f'unknown peer head {name!r}; choose one of {list(PEER_HEADS)}')
    in_chans = kwargs.pop('in_chans', 3)
    label_names = kwargs.pop('label_names', None)
    trunk, grid, _ = create_backbone(backbone, in_chans=in_chans, img_size=kwargs.pop('img_size', None),
                                     pretrained=pretrained_backbone, **(kwargs.pop('backbone_kwargs', None) or {}))
    d = grid.num_features
    allowed = {'ml_decoder': {'num_of_groups', 'decoder_embedding'}, 'csra': {'num_heads', 'lam'},
               'ml_gcn': {'hidden'}}[name]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f'create_peer_model({name!r}): unknown option(s) {sorted(unknown)}; allowed {sorted(allowed)}')
    if name == 'ml_decoder':
        head: nn.Module = timm_ml_decoder(num_classes, d, **kwargs)
    elif name == 'csra':
        head = CSRAHead(d, num_classes, **kwargs)
    else:
        nodes = _embeddings(label_embeddings, num_classes, label_names)
        adj = torch.eye(num_classes) if adjacency is None else torch.as_tensor(np.asarray(adjacency, dtype=np.float32))
        head = MLGCNHead(d, nodes, adj, **kwargs)
    return PeerModel(name, trunk, backbone, grid, head, num_classes, in_chans)
