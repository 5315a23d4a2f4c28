"""Tests of the relational graph attention layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from redifu.nn.kernels.relational import ParameterCache, weighted_gather_scatter
from redifu.nn.relational_attention import RelationalGraphAttention


@pytest.fixture
def config():
    return dict(in_dim=6, out_dim=8, num_relations=4, num_heads=2)


def random_graph(*, num_nodes: int, num_edges: int, num_relations: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    edge_type = torch.randint(0, num_relations, (num_edges,), generator=generator)
    return edge_index, edge_type


def dense_reference(layer: RelationalGraphAttention, x, edge_index, edge_type):
    """Per-edge weight matrices (E, in, out): the naive formulation the layer must equal."""
    H, D = layer.num_heads, layer.head_dim
    src, dst = edge_index
    weight = layer.relation_weights()[edge_type]  # (E, in, out)
    z_src = torch.einsum("ei,eio->eo", x[src], weight).view(-1, H, D)  # (E, H, D)
    z_dst = torch.einsum("ei,eio->eo", x[dst], weight).view(-1, H, D)
    logits = (z_dst * layer.att_dst[edge_type]).sum(-1) + (z_src * layer.att_src[edge_type]).sum(-1)
    logits = F.leaky_relu(logits, layer.negative_slope)  # (E, H)
    alpha = torch.zeros_like(logits)
    for i in dst.unique():
        incoming = dst == i
        alpha[incoming] = logits[incoming].softmax(dim=0)
    out = torch.zeros(x.size(0), H, D, dtype=x.dtype).index_add_(0, dst, alpha.unsqueeze(-1) * z_src)
    out = out.reshape(x.size(0), -1)
    return (out + layer.bias if layer.bias is not None else out), alpha


@pytest.mark.parametrize("num_heads", [1, 2, 4])
@pytest.mark.parametrize("num_bases", [None, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_dense_per_edge_reference(config, num_heads, num_bases, bias):
    config.update(num_heads=num_heads, num_bases=num_bases, bias=bias)
    layer = RelationalGraphAttention(**config).double()
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(7, 6, dtype=torch.float64)
    edge_index, edge_type = random_graph(num_nodes=7, num_edges=25, num_relations=4)
    out, attention = layer(x, edge_index, edge_type, return_attention=True)
    expected_out, expected_attention = dense_reference(layer, x, edge_index, edge_type)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(attention, expected_attention)


def test_gradients_match_reference_and_gradcheck(config):
    layer = RelationalGraphAttention(**config).double()
    x = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    edge_index, edge_type = random_graph(num_nodes=6, num_edges=20, num_relations=4, seed=3)
    torch.autograd.gradcheck(lambda inp: layer(inp, edge_index, edge_type)[0], (x,))
    out, _ = layer(x, edge_index, edge_type)
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])
    expected_out, _ = dense_reference(layer, x, edge_index, edge_type)
    expected = torch.autograd.grad(expected_out.pow(2).sum(), [x, *layer.parameters()])
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp)


@pytest.mark.parametrize("chunk_elements", [1, 3 * 8, 7 * 8, 1 << 22])  # one edge, ragged tails, one chunk
def test_weighted_gather_scatter_equals_dense_sum_for_any_chunking(chunk_elements):
    """out[i] = sum over edges e into i of alpha[e] * table[value_index[e]], values and gradients."""
    g = torch.Generator().manual_seed(5)
    alpha = torch.rand(40, 2, generator=g, dtype=torch.float64).requires_grad_()
    table = torch.randn(11, 2, 4, generator=g, dtype=torch.float64).requires_grad_()
    value_index = torch.randint(0, 11, (40,), generator=g)
    index = torch.randint(0, 9, (40,), generator=g)
    out = weighted_gather_scatter(alpha, table, value_index, index, 9, chunk_elements=chunk_elements)
    expected = torch.zeros(9, 2, 4, dtype=torch.float64).index_add_(0, index, alpha[..., None] * table[value_index])
    torch.testing.assert_close(out, expected)
    grad = torch.randn(9, 2, 4, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (alpha, table), grad)
    want = torch.autograd.grad(expected, (alpha, table), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_shapes_and_backward(config, num_heads):
    config.update(num_heads=num_heads, dropout=0.2)
    layer = RelationalGraphAttention(**config)
    x = torch.randn(10, 6, requires_grad=True)
    edge_index, edge_type = random_graph(num_nodes=10, num_edges=30, num_relations=4)
    out, attention = layer(x, edge_index, edge_type, return_attention=True)
    assert out.shape == (10, 8)
    assert attention.shape == (30, num_heads)
    assert layer(x, edge_index, edge_type)[1] is None
    out.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_attention_sums_to_one_over_incoming_edges(config):
    config.update(num_heads=4)
    layer = RelationalGraphAttention(**config)
    edge_index, edge_type = random_graph(num_nodes=12, num_edges=50, num_relations=4, seed=1)
    _, attention = layer(torch.randn(12, 6), edge_index, edge_type, return_attention=True)
    assert torch.all(attention >= 0)
    sums = torch.zeros(12, 4).index_add_(0, edge_index[1], attention)
    has_incoming = torch.zeros(12, dtype=torch.bool)
    has_incoming[edge_index[1]] = True
    torch.testing.assert_close(sums[has_incoming], torch.ones_like(sums[has_incoming]))
    assert torch.all(sums[~has_incoming] == 0)


def test_relation_types_matter(config):
    layer = RelationalGraphAttention(**config)
    x = torch.randn(5, 6)
    edge_index = torch.tensor([[0, 1, 2, 3], [4, 4, 4, 4]])
    out_a, _ = layer(x, edge_index, torch.tensor([0, 0, 1, 1]))
    out_b, _ = layer(x, edge_index, torch.tensor([0, 0, 1, 2]))
    assert not torch.allclose(out_a[4], out_b[4])
    torch.testing.assert_close(out_a[:4], out_b[:4])  # nodes 0..3 receive nothing either way


def test_isolated_node_outputs_bias(config):
    layer = RelationalGraphAttention(**config)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(4, 6, requires_grad=True)
    out, _ = layer(x, torch.tensor([[0, 1], [1, 0]]), torch.tensor([2, 3]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[2], layer.bias.detach())
    torch.testing.assert_close(out[3], layer.bias.detach())
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[2:] == 0)


def test_graph_without_edges(config):
    layer = RelationalGraphAttention(**config, bias=False)
    out, attention = layer(
        torch.randn(3, 6), torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long),
        return_attention=True,
    )
    assert torch.all(out == 0) and attention.shape == (0, 2)


def test_dropout_only_in_training(config):
    config.update(dropout=0.5)
    layer = RelationalGraphAttention(**config)
    x = torch.randn(6, 6)
    edge_index, edge_type = random_graph(num_nodes=6, num_edges=30, num_relations=4)
    layer.eval()
    first, _ = layer(x, edge_index, edge_type)
    second, _ = layer(x, edge_index, edge_type)
    torch.testing.assert_close(first, second)
    layer.train()
    torch.manual_seed(0)
    noisy, _ = layer(x, edge_index, edge_type)
    assert not torch.allclose(noisy, first)


@pytest.mark.parametrize("num_bases", [None, 3])
def test_parameters_finite_after_init_and_reset(config, num_bases):
    layer = RelationalGraphAttention(**config, num_bases=num_bases)
    names = {name for name, _ in layer.named_parameters()}
    expected = {"att_src", "att_dst", "bias"} | ({"weight"} if num_bases is None else {"basis", "comp"})
    assert names == expected
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for name, p in layer.named_parameters() if name != "bias")
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(float("nan"))
    layer.reset_parameters()
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    assert torch.all(layer.bias == 0)


def test_basis_decomposition_shares_parameters():
    full = RelationalGraphAttention(in_dim=16, out_dim=16, num_relations=10)
    bases = RelationalGraphAttention(in_dim=16, out_dim=16, num_relations=10, num_bases=2)
    assert sum(p.numel() for p in bases.parameters()) < sum(p.numel() for p in full.parameters())
    assert bases.relation_weights().shape == (10, 16, 16)


@pytest.mark.parametrize(
    "override, name",
    [
        (dict(in_dim=0), "in_dim"),
        (dict(out_dim=0), "out_dim"),
        (dict(num_relations=0), "num_relations"),
        (dict(num_heads=0), "num_heads"),
        (dict(num_heads=3), "num_heads"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout=1.0), "dropout"),
        (dict(negative_slope=-1.0), "negative_slope"),
        (dict(num_bases=0), "num_bases"),
    ],
)
def test_rejects_bad_options(config, override, name):
    config.update(override)
    with pytest.raises(ValueError, match=name):
        RelationalGraphAttention(**config)


def test_rejects_bad_inputs(config):
    layer = RelationalGraphAttention(**config)
    x = torch.randn(3, 6)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(3, 5), edge_index, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="edge_type"):
        layer(x, edge_index, torch.tensor([0]))
    with pytest.raises(ValueError, match="edge_type"):
        layer(x, edge_index, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="edge_index"):
        layer(x, edge_index[0], torch.tensor([0, 1]))


def test_no_per_edge_feature_tensor_is_kept_for_backward():
    # 2,000 edges on 40 nodes: any (E, out) message or (E, in, out) weight tensor saved for
    # autograd would dwarf the per-pair and (E, H) tensors the layer is meant to keep.
    layer = RelationalGraphAttention(in_dim=32, out_dim=32, num_relations=3, num_heads=4)
    x = torch.randn(40, 32, requires_grad=True)
    edge_index, edge_type = random_graph(num_nodes=40, num_edges=2000, num_relations=3)
    parameters = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out, _ = layer(x, edge_index, edge_type)
    assert max(saved.values()) <= 2000 * 4  # the (E, H) attention weights
    assert sum(saved.values()) < 2000 * 32  # less than one (E, out) message tensor in total
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("num_bases", [None, 2])
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_transforms_kept_without_autograd_follow_every_parameter_change(config, num_bases, context):
    """Without autograd the per-relation transforms are reused, never stale: an optimiser step,
    load_state_dict and replacing a parameter all show in the next output."""
    config.update(num_bases=num_bases)
    layer = RelationalGraphAttention(**config).double().eval()
    x = torch.randn(7, 6, dtype=torch.float64)
    edge_index, edge_type = random_graph(num_nodes=7, num_edges=25, num_relations=4)

    def check():
        with context():
            kept = layer(x, edge_index, edge_type)[0]
            again = layer(x, edge_index, edge_type)[0]
        expected = dense_reference(layer, x, edge_index, edge_type)[0].detach()
        torch.testing.assert_close(kept, expected)
        torch.testing.assert_close(again, expected)
        return kept

    first = check()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x, edge_index, edge_type)[0].square().sum().backward()
    optimizer.step()
    stepped = check()
    assert not torch.allclose(stepped, first)
    other = RelationalGraphAttention(**config).double()
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(check(), dense_reference(other, x, edge_index, edge_type)[0].detach())
    with torch.no_grad():
        layer.att_src.mul_(-1.0)  # in place, without autograd
    check()
    layer.att_dst = torch.nn.Parameter(torch.randn_like(layer.att_dst))  # a new parameter object
    check()


def test_parameter_cache_computes_once_per_parameter_state_and_never_under_autograd():
    layer = torch.nn.Linear(3, 2)
    cache, calls = ParameterCache(), []

    def compute():
        calls.append(1)
        return layer.weight.sum() + layer.bias.sum()

    with torch.no_grad():
        first = cache.get(layer, compute)
        assert cache.get(layer, compute) is first and len(calls) == 1  # kept
        layer.weight.add_(1.0)  # in place: the version counter moves
        assert cache.get(layer, compute) is not first and len(calls) == 2
    with torch.inference_mode():
        cache.get(layer, compute)
        assert len(calls) == 3  # inference tensors are not reused outside inference mode, nor back
    kept = cache.get(layer, compute)  # autograd on: computed afresh, with a graph, and nothing kept
    assert kept.requires_grad and len(calls) == 4
    with torch.no_grad():
        cache.get(layer, compute)
    assert len(calls) == 5
    layer.bias = torch.nn.Parameter(torch.zeros(2))  # a new parameter object
    with torch.no_grad():
        assert cache.get(layer, compute).item() == pytest.approx(layer.weight.sum().item())
    assert len(calls) == 6
