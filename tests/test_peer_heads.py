"""Tests of the peer heads in ``benchmarks/peer_heads.py`` (ML-Decoder, CSRA, ML-GCN on a timm backbone)."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from benchmarks.peer_heads import (  # noqa: E402
    PEER_HEADS, CSRAHead, MLGCNHead, create_peer_model, ml_gcn_adjacency, timm_ml_decoder)

BACKBONE = 'resnet18'


@pytest.mark.parametrize('name', PEER_HEADS)
def test_peer_model_gives_logits_and_every_trainable_parameter_a_gradient(name):
    """forward(x) -> [B, C]; a backward pass reaches every trainable parameter (non-zero for the head's: timm's
    ResNet zero-initialises each block's last BatchNorm, so some backbone gradients are exactly 0 at init)."""
    model = create_peer_model(name, BACKBONE, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    zero = [n for n, p in model.head.named_parameters() if p.requires_grad and not p.grad.abs().sum()]
    assert zero == []


def test_ml_decoder_is_timms_module_with_its_frozen_queries():
    """The head is timm's MLDecoder class with timm's defaults; only its query embedding is frozen, as shipped."""
    from timm.layers.ml_decoder import MLDecoder
    head = timm_ml_decoder(7, 512)
    assert isinstance(head, MLDecoder)
    assert head.embed_len_decoder == 7 and head.embed_standart.out_features == 768
    frozen = [n for n, p in head.named_parameters() if not p.requires_grad]
    assert frozen == ['query_embed.weight']
    # same parameter names as timm's own module: the compatibility stack only replaces the container
    assert {n for n, _ in head.named_parameters()} == {n for n, _ in MLDecoder(7, initial_num_features=512).named_parameters()}


def test_csra_matches_hand_computation():
    """One head with T = 1: logit = mean_p s + lam * sum_p softmax(s)_p s_p, s = conv / ||w_c||; T = inf is max."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    head = CSRAHead(4, 3, num_heads=1, lam=0.1)
    w = head.heads[0].weight.view(3, 4)
    s = torch.einsum('cd,bdp->bcp', w / w.norm(dim=1, keepdim=True), x.flatten(2))
    expected = s.mean(2) + 0.1 * (s * s.softmax(2)).sum(2)
    assert torch.allclose(head(x), expected, atol=1e-5)
    two = CSRAHead(4, 3, num_heads=2, lam=0.5)
    assert two.temperatures == (1.0, math.inf)
    outs = []
    for conv, t in zip(two.heads, two.temperatures):
        v = conv.weight.view(3, 4)
        s = torch.einsum('cd,bdp->bcp', v / v.norm(dim=1, keepdim=True), x.flatten(2))
        outs.append(s.mean(2) + 0.5 * (s.amax(2) if math.isinf(t) else (s * (t * s).softmax(2)).sum(2)))
    assert torch.allclose(two(x), outs[0] + outs[1], atol=1e-5)


def test_csra_defaults_are_the_authors_coco_setting():
    """Default: 4 heads with T = 1, 2, 4, inf and lambda 0.5; an unsupported head count is refused."""
    model = create_peer_model('csra', BACKBONE, num_classes=5)
    assert model.head.temperatures == (1.0, 2.0, 4.0, math.inf) and model.head.lam == 0.5
    with pytest.raises(ValueError, match='num_heads'):
        CSRAHead(8, 5, num_heads=3)


def test_ml_gcn_adjacency_hand_worked_example():
    """Counts -> P(j|i) -> threshold tau -> re-weight p / degree off the diagonal, 1 - p on it (paper eqs. 6-8).

    labels (4 images x 3 classes): [1,1,0] [1,0,0] [1,1,1] [0,0,1]
    N = (3, 2, 2); M_01 = 2, M_02 = 1, M_12 = 1
    P(1|0) = 2/3 >= .4, P(2|0) = 1/3 < .4   -> row 0 keeps neighbour 1        -> [0.8, 0.2, 0]
    P(0|1) = 1, P(2|1) = 1/2                 -> row 1 keeps 0 and 2 (p/2 each) -> [0.1, 0.8, 0.1]
    P(0|2) = 1/2, P(1|2) = 1/2               -> row 2 keeps 0 and 1            -> [0.1, 0.1, 0.8]
    """
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]])
    expected = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert torch.allclose(ml_gcn_adjacency(y, tau=0.4, p=0.2), expected, atol=1e-6)
    # tau above every conditional probability: no neighbours, so each node keeps itself (diagonal 1)
    assert torch.equal(ml_gcn_adjacency(y, tau=1.0, p=0.2)[2], torch.tensor([0.0, 0.0, 1.0]))
    # a class never present and ignored (-1) entries do not count as co-occurrence
    y2 = torch.tensor([[1, 0, -1], [1, 1, -1]])
    a = ml_gcn_adjacency(y2)
    assert torch.equal(a[2], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(a.sum(1), torch.ones(3))


def test_ml_gcn_head_uses_the_adjacency_and_max_pooling():
    """Logits = GMP(F) @ (A' LeakyReLU(A' X W1) W2)^T; changing the adjacency changes the classifiers."""
    emb = torch.randn(3, 5)
    adj = ml_gcn_adjacency(torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]]))
    head = MLGCNHead(6, emb, adj, hidden=8)
    x = torch.randn(2, 6, 2, 2)
    w = adj @ (torch.nn.functional.leaky_relu(adj @ (emb @ head.weight1), 0.2) @ head.weight2)
    assert torch.allclose(head(x), x.amax((2, 3)) @ w.T, atol=1e-5)
    other = MLGCNHead(6, emb, torch.eye(3), hidden=8)
    other.load_state_dict({**head.state_dict(), 'adjacency': torch.eye(3)})
    assert not torch.allclose(other(x), head(x))
    with pytest.raises(ValueError, match='adjacency'):
        MLGCNHead(6, emb, torch.eye(2))


def test_bad_names_and_options_are_refused():
    with pytest.raises(ValueError, match='unknown peer head'):
        create_peer_model('query2label', BACKBONE)
    with pytest.raises(ValueError, match='unknown option'):
        create_peer_model('csra', BACKBONE, num_classes=3, hidden=4)
    with pytest.raises(ValueError, match='label_embeddings'):
        create_peer_model('ml_gcn', BACKBONE, num_classes=3, label_embeddings=torch.randn(4, 5))


@pytest.mark.parametrize('backbone, kwargs, grid', [
    ('test_vit', {}, (4, 6)), ('deit_tiny_distilled_patch16_224', dict(depth=1), (4, 6)),
    ('swin_tiny_patch4_window7_224', dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                                          window_size=4), (2, 3))])
@pytest.mark.parametrize('name', PEER_HEADS)
def test_peer_heads_run_on_the_grid_srdl_gets(name, backbone, kwargs, grid):
    """On a ViT (class / distillation tokens) or Swin backbone each peer head sits on the same [B, d, h, w] grid as
    SRDL (the backbone adapter's: prefix tokens dropped, NHWC permuted) and trains every trainable parameter."""
    model = create_peer_model(name, backbone, num_classes=4, backbone_kwargs=kwargs)
    x = torch.randn(2, 3, 64, 96)
    feat = model.forward_features(x)
    assert feat.shape == (2, model.num_features, *grid)
    logits = model(x)
    assert logits.shape == (2, 4)
    logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
