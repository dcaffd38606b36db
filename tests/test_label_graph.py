"""Tests for srdl_timm/layers/label_graph.py (paper eq. 3)."""
import math

import pytest
import torch
import torch.nn.functional as F

from srdl_timm.layers import LabelGraph, resolve_graph_kind, state_graph_kind
from srdl_timm.layers.label_graph import DENSE_MAX_CLASSES, knn_pattern


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
    (dict(node_features=torch.randn(3, 4), neighbors=0), 'neighbors'),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    """Invalid shapes or hyper-parameters raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=message):
        LabelGraph(**kwargs)


def _dense_from_knn(graph):
    """The dense LabelGraph whose V is ``graph``'s kNN V expanded to C x C (-inf off the pattern)."""
    dense = LabelGraph(graph.node_features, num_layers=len(graph.layers)).double()
    with torch.no_grad():
        dense.adjacency.fill_(float('-inf')).scatter_(1, graph.neighbor_index, graph.adjacency)
        for mine, theirs in zip(dense.layers, graph.layers):
            mine.weight.copy_(theirs.weight)
    return dense


def test_knn_graph_equals_the_dense_graph_with_the_same_adjacency_float64():
    """Eq. 3 with the kNN V (a weighted gather) equals the dense V-hat A W when the dense V is the kNN one expanded
    to C x C (-inf off the pattern): same V_hat, same A^L and same gradients for V's entries, in float64."""
    torch.manual_seed(0)
    graph = LabelGraph(torch.randn(40, 6, dtype=torch.float64), num_layers=2, neighbors=5).double()
    with torch.no_grad():
        graph.adjacency.normal_(0, 1)
    dense = _dense_from_knn(graph)
    torch.testing.assert_close(dense.normalized_adjacency().gather(1, graph.neighbor_index),
                               graph.normalized_adjacency(), rtol=0, atol=1e-14)
    out, expected = graph(), dense()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(dense.adjacency.grad.gather(1, graph.neighbor_index), graph.adjacency.grad,
                               rtol=1e-10, atol=1e-12)


def test_knn_pattern_is_self_then_nearest_by_cosine():
    """Each node's pattern starts with itself, then the k - 1 nodes of highest cosine similarity, also when the
    similarities are computed a few rows at a time; k above C is capped at C."""
    nodes = torch.randn(30, 4)
    graph = LabelGraph(nodes, neighbors=4)
    unit = F.normalize(nodes, dim=1)
    sim = (unit @ unit.T).fill_diagonal_(-2)
    assert torch.equal(graph.neighbor_index[:, 0], torch.arange(30))
    assert torch.equal(graph.neighbor_index[:, 1:].sort(1).values, sim.topk(3, dim=1).indices.sort(1).values)
    assert torch.equal(knn_pattern(nodes, 4, chunk=7), graph.neighbor_index)
    assert LabelGraph(torch.randn(3, 4), neighbors=16).adjacency.shape == (3, 3)


def test_knn_initial_self_weight_as_the_dense_graph():
    """At init the kNN V_hat gives each node about self_weight of itself (the dense rule with k for C)."""
    torch.manual_seed(0)
    v_hat = LabelGraph(torch.randn(200, 8), neighbors=16, self_weight=0.8).normalized_adjacency()
    assert v_hat[:, 0].mean().item() == pytest.approx(0.8, abs=0.03)
    torch.testing.assert_close(v_hat.sum(1), torch.ones(200))


def test_knn_graph_size_is_linear_in_c():
    """Parameters and buffers of the kNN graph grow linearly in C (C x k + L d'^2, C x d' + C x k), the dense V
    quadratically: counted at C = 100, 1,000 and 5,000."""
    def sizes(graph):
        return sum(p.numel() for p in graph.parameters()), sum(b.numel() for b in graph.buffers())

    d, k, layers = 8, 16, 2
    for c in (100, 1000, 5000):
        params, buffers = sizes(LabelGraph(torch.randn(c, d), num_layers=layers, neighbors=k))
        assert params == c * k + layers * d * d
        assert buffers == c * d + c * k
    assert sizes(LabelGraph(torch.randn(1000, d), num_layers=layers))[0] == 1000 * 1000 + layers * d * d


def test_graph_kind_rule_and_state_kind():
    """'auto' takes the dense V up to DENSE_MAX_CLASSES categories and the kNN V above; a bad kind names the option;
    a state dict's kind is read from its tensors (None without graph layers)."""
    assert resolve_graph_kind('auto', DENSE_MAX_CLASSES) == 'dense'
    assert resolve_graph_kind('auto', DENSE_MAX_CLASSES + 1) == 'knn'
    assert resolve_graph_kind('dense', 10 ** 5) == 'dense'
    with pytest.raises(ValueError, match="graph_kind must be 'auto', 'dense' or 'knn', got 'sparse'"):
        resolve_graph_kind('sparse', 10)
    nodes = torch.randn(5, 4)
    assert state_graph_kind(LabelGraph(nodes).state_dict(), prefix='') == 'dense'
    assert state_graph_kind(LabelGraph(nodes, neighbors=3).state_dict(), prefix='') == 'knn'
    assert state_graph_kind(LabelGraph(nodes, num_layers=0, neighbors=3).state_dict(), prefix='') is None


def _knn_weights(tmp_path, num_classes=5):
    """A kNN-graph srdl_test_resnet saved as a bare safetensors file (no config beside it)."""
    import timm
    from safetensors.torch import save_file
    import srdl_timm  # noqa: F401
    model = timm.create_model('srdl_test_resnet', num_classes=num_classes, graph_kind='knn', graph_neighbors=3,
                              label_embeddings='random')
    save_file(model.state_dict(), tmp_path / 'knn.safetensors')
    return model, tmp_path / 'knn.safetensors'


def test_model_records_kind_and_loads_it_from_weights_alone(tmp_path):
    """SRDL's model_args record the resolved kind and k; weights without a config load into their own kind (the
    pattern included), exactly."""
    from srdl_timm.loading import load_model, model_args
    model, file = _knn_weights(tmp_path)
    assert (model_args(model)['graph_kind'], model_args(model)['graph_neighbors']) == ('knn', 3)
    loaded = load_model('srdl_test_resnet', file)
    assert loaded.graph_kind == 'knn'
    assert torch.equal(loaded.label_graph.neighbor_index, model.label_graph.neighbor_index)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_a_checkpoint_of_the_other_kind_is_refused_by_name(tmp_path):
    """A kNN checkpoint never loads into a dense graph (nor the reverse), through the strict loader and through
    timm's pretrained path (checkpoint_filter_fn, which would otherwise drop V): the error names both kinds and the
    argument to pass. For other categories the graph is re-initialised anyway, so fine-tuning is not refused."""
    import timm
    from srdl_timm.loading import load_model
    from srdl_timm.models.srdl import checkpoint_filter_fn
    knn, file = _knn_weights(tmp_path)
    message = "label graph V \\(eq. 3\\) is knn but the model was built with a dense one: pass graph_kind='knn'"
    with pytest.raises(ValueError, match=message):
        load_model('srdl_test_resnet', file, model_kwargs=dict(graph_kind='dense'))
    with pytest.raises(ValueError, match=message):
        timm.create_model('srdl_test_resnet', pretrained=True, num_classes=5,
                          pretrained_cfg_overlay=dict(file=str(file)))
    dense = timm.create_model('srdl_test_resnet', num_classes=5, label_embeddings='random')
    with pytest.raises(ValueError, match="is dense but the model was built with a knn one: pass graph_kind='dense'"):
        checkpoint_filter_fn(dense.state_dict(), knn)
    other = timm.create_model('srdl_test_resnet', num_classes=7, label_embeddings='random')
    assert 'label_graph.adjacency' not in checkpoint_filter_fn(knn.state_dict(), other)
