"""Label graph over word-vector nodes (paper §3.2, eq. 3)."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ['LabelGraph']


class LabelGraph(nn.Module):
    """Contextualised semantic embeddings ``x_c`` from label-name word vectors (eq. 3).

    ``A^{l+1} = h(V_hat A^l W^l)`` with ``h`` = LeakyReLU, ``L`` layers, ``A^0`` the word vectors. Choices the
    paper leaves open (all recorded in MODEL_CARD.md):

    * ``V`` is a learnable ``C x C`` parameter, randomly initialised (N(0, 0.1^2)); ``V_hat = softmax(V)`` row-wise,
      so ``V_hat`` is always a valid propagation matrix (non-negative rows that sum to one). So that
      categories stay distinguishable at initialisation, the diagonal of ``V`` starts at
      ``log(self_weight / (1 - self_weight) * (C - 1))``, which gives each node ``self_weight`` (0.8, ML-GCN's
      re-weighting with p = 0.2) of its own feature and shares the rest out.
    * ``W^l`` is ``d' x d'`` without bias; LeakyReLU slope 0.2 (as ML-GCN); ``h`` after every layer.
    * ``A^0`` is a buffer: the word vectors are inputs, not parameters.
    * ``num_layers = 0`` (the "CAR without GCN" ablation of Table 6) returns ``A^0`` itself.
    """

    def __init__(
            self,
            node_features: Tensor,
            num_layers: int = 2,
            negative_slope: float = 0.2,
            self_weight: float = 0.8,
    ):
        super().__init__()
        if node_features.ndim != 2:
            raise ValueError(f'node_features must be [num_classes, embed_dim], got shape {tuple(node_features.shape)}')
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        if not 0.0 < self_weight < 1.0:
            raise ValueError(f'self_weight must be in (0, 1), got {self_weight}')
        num_classes, embed_dim = node_features.shape
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.self_weight = self_weight
        self.register_buffer('node_features', node_features.detach().clone().float())
        if num_layers > 0:
            self.adjacency = nn.Parameter(torch.empty(num_classes, num_classes))
        else:
            self.register_parameter('adjacency', None)
        self.layers = nn.ModuleList([nn.Linear(embed_dim, embed_dim, bias=False) for _ in range(num_layers)])
        self.act = nn.LeakyReLU(negative_slope)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.adjacency is not None:
            nn.init.normal_(self.adjacency, std=0.1)
            if self.num_classes > 1:
                diag = math.log(self.self_weight / (1.0 - self.self_weight) * (self.num_classes - 1))
                with torch.no_grad():
                    self.adjacency.diagonal().add_(diag)
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)

    def normalized_adjacency(self) -> Optional[Tensor]:
        """``V_hat``: the row-softmax of ``V`` (rows non-negative, summing to one)."""
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
            nodes = self.act(adjacency.to(nodes.dtype) @ layer(nodes))
        return nodes

    def extra_repr(self) -> str:
        return f'num_classes={self.num_classes}, embed_dim={self.embed_dim}, num_layers={self.num_layers}'
