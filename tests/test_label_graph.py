"""Tests for srdl_timm/layers/label_graph.py (paper eq. 3)."""
import math

import pytest
import torch
import torch.nn.functional as F

from srdl_timm.layers import LabelGraph


def test_eq3_matches_direct_computation_float64():
    """A^{l+1} = LeakyReLU(V_hat A^l W^l) for each layer, computed node by node in float64."""
    nodes = torch.randn(6, 5, dtype=torch.float64)
    graph = LabelGraph(nodes, num_layers=2).double()
    v_hat = torch.softmax(graph.adjacency, dim=1)
    expected = nodes
    for layer in graph.layers:
        transformed = expected @ layer.weight.T  # A W
        rows = []
        for c in range(6):
            rows.append(sum(v_hat[c, j] * transformed[j] for j in range(6)))
        expected = F.leaky_relu(torch.stack(rows), 0.2)
    torch.testing.assert_close(graph(), expected)


def test_normalized_adjacency_is_a_propagation_matrix():
    """V_hat is non-negative with rows summing to 1, also after V has been changed arbitrarily."""
    graph = LabelGraph(torch.randn(7, 4))
    with torch.no_grad():
        graph.adjacency.normal_(0, 10)
    v_hat = graph.normalized_adjacency()
    assert (v_hat >= 0).all()
    torch.testing.assert_close(v_hat.sum(1), torch.ones(7))


def test_initial_self_weight_keeps_categories_distinct():
    """At init each node keeps about self_weight of its own feature (V random, diagonal offset)."""
    torch.manual_seed(0)
    graph = LabelGraph(torch.randn(80, 8), self_weight=0.8)
    diag = graph.normalized_adjacency().diagonal()
    assert diag.mean().item() == pytest.approx(0.8, abs=0.03)
    assert not torch.equal(graph.adjacency.detach(), graph.adjacency.detach().T)  # randomly initialised


def test_zero_layers_is_the_no_gcn_ablation():
    """num_layers=0 returns the word vectors unchanged and owns no parameters."""
    nodes = torch.randn(3, 4)
    graph = LabelGraph(nodes, num_layers=0)
    torch.testing.assert_close(graph(), nodes)
    assert list(graph.parameters()) == []


def test_word_vectors_are_a_buffer_in_the_state_dict():
    """A^0 is saved with the model (so pretrained weights carry their label nodes) but not trained."""
    graph = LabelGraph(torch.randn(3, 4))
    assert 'node_features' in graph.state_dict()
    assert all(p is not graph.node_features for p in graph.parameters())


@pytest.mark.parametrize('kwargs, message', [
    (dict(node_features=torch.randn(3)), 'num_classes, embed_dim'),
    (dict(node_features=torch.randn(3, 4), num_layers=-1), 'num_layers'),
    (dict(node_features=torch.randn(3, 4), self_weight=1.0), 'self_weight'),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    """Invalid shapes or hyper-parameters raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=message):
        LabelGraph(**kwargs)
