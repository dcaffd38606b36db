"""Label graph over word-vector nodes (paper §3.2, eq. 3): the paper's dense ``V`` or a k-nearest-neighbour one."""
import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['LabelGraph', 'GRAPH_KINDS', 'DENSE_MAX_CLASSES', 'resolve_graph_kind', 'state_graph_kind', 'knn_pattern']

#: ``V`` of eq. 3: 'dense' (the paper's ``C x C``) or 'knn' (``C x k`` on a fixed neighbour pattern, not the paper's)
GRAPH_KINDS = ('dense', 'knn')
#: ``graph_kind='auto'`` takes the dense ``V`` up to this many categories and the kNN ``V`` above
DENSE_MAX_CLASSES = 1000


def resolve_graph_kind(kind: str, num_classes: int) -> str:
    """'dense' or 'knn' for ``kind`` ('auto': dense up to :data:`DENSE_MAX_CLASSES` categories, kNN above)."""
    if kind == 'auto':
        return 'dense' if num_classes <= DENSE_MAX_CLASSES else 'knn'
    if kind not in GRAPH_KINDS:
        raise ValueError(f"graph_kind must be 'auto', 'dense' or 'knn', got {kind!r}")
    return kind


def state_graph_kind(state: Mapping[str, Tensor], prefix: str = 'label_graph.') -> Optional[str]:
    """The kind of ``V`` a state dict holds: 'knn' (a neighbour pattern), 'dense', or None (no graph layers)."""
    if prefix + 'neighbor_index' in state:
        return 'knn'
    return 'dense' if prefix + 'adjacency' in state else None


def knn_pattern(nodes: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """``[C, k]`` indices of each node's ``k`` most cosine-similar nodes, itself first (no ``C x C`` tensor)."""
    unit = F.normalize(nodes.detach().float(), dim=1)
    rows = []
    for start in range(0, unit.shape[0], chunk):
        sim = unit[start:start + chunk] @ unit.T
        own = torch.arange(sim.shape[0])
        sim[own, own + start] = float('inf')
        rows.append(sim.topk(k, dim=1).indices)
    return torch.cat(rows)


class LabelGraph(nn.Module):
    """Contextualised semantic embeddings ``x_c`` from label-name word vectors (eq. 3).

    ``A^{l+1} = h(V_hat A^l W^l)`` with ``h`` = LeakyReLU (slope 0.2), ``W^l`` ``d' x d'`` without bias, ``A^0``
    the word vectors (a buffer). ``V`` is learnable, N(0, 0.1^2), ``V_hat = softmax(V)`` row-wise; its diagonal
    starts so each node keeps ``self_weight`` of its own feature (ML-GCN's p = 0.2). ``neighbors=k`` (not the
    paper's) keeps only each node and its ``k - 1`` nearest by cosine of ``A^0`` (:func:`knn_pattern`), so ``V``
    is ``C x k`` and ``V_hat A W`` a weighted gather. ``num_layers = 0`` (Table 6's "CAR w/o GCN") returns ``A^0``.
    """

    def __init__(
            self,
            node_features: Tensor,
            num_layers: int = 2,
            negative_slope: float = 0.2,
            self_weight: float = 0.8,
            neighbors: Optional[int] = None,
    ):
        super().__init__()
        if node_features.ndim != 2:
            raise ValueError(f'node_features must be [num_classes, embed_dim], got shape {tuple(node_features.shape)}')
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        if not 0.0 < self_weight < 1.0:
            raise ValueError(f'self_weight must be in (0, 1), got {self_weight}')
        if neighbors is not None and neighbors < 1:
            raise ValueError(f'neighbors must be >= 1 (the node itself included), got {neighbors}')
        num_classes, embed_dim = node_features.shape
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.self_weight = self_weight
        self.kind = 'dense' if neighbors is None else 'knn'
        self.register_buffer('node_features', node_features.detach().clone().float())
        knn = neighbors is not None and num_layers > 0
        self.register_buffer('neighbor_index', knn_pattern(node_features, min(neighbors, num_classes)) if knn else None)
        if num_layers > 0:
            width = min(neighbors, num_classes) if knn else num_classes
            self.adjacency = nn.Parameter(torch.empty(num_classes, width))
        else:
            self.register_parameter('adjacency', None)
        self.layers = nn.ModuleList([nn.Linear(embed_dim, embed_dim, bias=False) for _ in range(num_layers)])
        self.act = nn.LeakyReLU(negative_slope)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.adjacency is not None:
            nn.init.normal_(self.adjacency, std=0.1)
            width = self.adjacency.shape[1]  # C, or k (the node itself is column 0 of its pattern)
            if width > 1:
                diag = math.log(self.self_weight / (1.0 - self.self_weight) * (width - 1))
                with torch.no_grad():
                    (self.adjacency.diagonal() if self.neighbor_index is None else self.adjacency[:, 0]).add_(diag)
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)

    def normalized_adjacency(self) -> Optional[Tensor]:
        """``V_hat``: the row-softmax of ``V`` (rows non-negative, summing to one); ``[C, k]`` for the kNN ``V``."""
        if self.adjacency is None:
            return None
        return torch.softmax(self.adjacency, dim=1)

    def forward(self) -> Tensor:
        """Return ``A^L`` ``[C, d']``; row ``c`` is the contextualised embedding ``x_c`` (eq. 3)."""
        nodes = self.node_features
        adjacency = self.normalized_adjacency()
        if adjacency is None:
            return nodes
        for layer in self.layers:
            nodes = self.act(self._propagate(adjacency, layer(nodes)))
        return nodes

    def _propagate(self, adjacency: Tensor, features: Tensor) -> Tensor:
        """``V_hat H``: a matrix product, or for the kNN ``V`` the ``V_hat``-weighted sum of each node's neighbours."""
        if self.neighbor_index is None:
            return adjacency.to(features.dtype) @ features
        return F.embedding_bag(self.neighbor_index, features, per_sample_weights=adjacency.to(features.dtype),
                               mode='sum')

    def extra_repr(self) -> str:
        knn = '' if self.neighbor_index is None else f', neighbors={self.neighbor_index.shape[1]}'
        return (f'num_classes={self.num_classes}, embed_dim={self.embed_dim}, num_layers={self.num_layers}, '
                f'kind={self.kind}{knn}')
