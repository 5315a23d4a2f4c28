"""Tests of the relation-aware utterance graph: edge construction and the graph encoder."""

from __future__ import annotations

import random

import pytest
import torch

from redifu.nn.relation_graph import (
    SPEAKER_RELATIONS,
    GraphAttention,
    RelationGraph,
    build_relation_graph,
    graph_relation_names,
    num_graph_relations,
)


def brute_force_edges(speakers, lengths, *, num_modalities, window, cross_modal, cross_window, speaker_aware):
    """Reference construction with plain Python loops over every utterance pair."""
    M = num_modalities
    starts = [sum(lengths[:b]) for b in range(len(lengths))]
    T = sum(lengths)
    pairs = [(a, b) for a in range(M) for b in range(M) if a != b]
    edges = set()
    for b, n in enumerate(lengths):
        for i in range(n):
            for j in range(n):
                if abs(i - j) <= window:
                    if i == j:
                        r = SPEAKER_RELATIONS.index("self")
                    else:
                        same = not speaker_aware or speakers[b][j] == speakers[b][i]
                        when = "past" if j < i else "future"
                        r = SPEAKER_RELATIONS.index(f"{'same' if same else 'other'}_speaker_{when}")
                    for m in range(M):
                        edges.add((m * T + starts[b] + j, m * T + starts[b] + i, 5 * m + r))
                if cross_modal and abs(i - j) <= cross_window:
                    for p, (ms, md) in enumerate(pairs):
                        edges.add((ms * T + starts[b] + j, md * T + starts[b] + i, 5 * M + p))
    return sorted(edges)


def random_batch(generator: random.Random, *, batch: int, max_len: int, num_speakers: int):
    lengths = [generator.randint(1, max_len) for _ in range(batch)]
    N = max(lengths)
    speakers = [[generator.randrange(num_speakers) for _ in range(N)] for _ in range(batch)]
    mask = torch.tensor([[i < n for i in range(N)] for n in lengths])
    return torch.tensor(speakers), mask, lengths, speakers


def as_sorted_triples(graph):
    src, dst = graph.edge_index.tolist()
    return sorted(zip(src, dst, graph.edge_type.tolist()))


def pair_count(n: int, w: int) -> int:
    """Ordered pairs (i, j) of [0, n) with |i - j| <= w."""
    return n + 2 * sum(n - d for d in range(1, min(w, n - 1) + 1))


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("num_modalities", [1, 2, 3])
@pytest.mark.parametrize("cross_modal", [False, True])
@pytest.mark.parametrize("speaker_aware", [True, False])
@pytest.mark.parametrize("cross_window", [0, 2])
def test_build_matches_brute_force(num_modalities, cross_modal, speaker_aware, cross_window):
    generator = random.Random(1000 * num_modalities + 10 * cross_window + cross_modal + 2 * speaker_aware)
    for _ in range(4):
        window = generator.randint(0, 5)
        speakers, mask, lengths, speaker_lists = random_batch(generator, batch=generator.randint(1, 4), max_len=9, num_speakers=3)
        graph = build_relation_graph(
            speakers,
            mask,
            num_modalities=num_modalities,
            window=window,
            cross_modal=cross_modal,
            cross_window=cross_window,
            speaker_aware=speaker_aware,
        )
        expected = brute_force_edges(
            speaker_lists,
            lengths,
            num_modalities=num_modalities,
            window=window,
            cross_modal=cross_modal,
            cross_window=cross_window,
            speaker_aware=speaker_aware,
        )
        assert as_sorted_triples(graph) == expected
        assert graph.edge_index.shape[1] == len(expected)  # no duplicates
        assert graph.num_nodes == num_modalities * sum(lengths)
        assert graph.num_relations == num_graph_relations(num_modalities=num_modalities, cross_modal=cross_modal)
        assert graph.edge_index.dtype == torch.long and graph.edge_type.dtype == torch.long
        assert int(graph.edge_type.max()) < graph.num_relations


def test_edges_sorted_by_target_and_speaker_blind_uses_same_relations():
    speakers = torch.tensor([[0, 1, 0, 1, 1]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    graph = build_relation_graph(speakers, mask, num_modalities=2, window=2, cross_modal=True, speaker_aware=False)
    dst = graph.edge_index[1]
    assert torch.all(dst[1:] >= dst[:-1])
    used = {SPEAKER_RELATIONS[t % 5] for t in graph.edge_type.tolist() if t < 10}
    assert used == {"self", "same_speaker_past", "same_speaker_future"}


def test_relation_semantics_on_a_small_dialogue():
    # Utterance 1 (speaker B) receives from 0 (A, earlier), 2 (A, later), 3 (B, later).
    speakers = torch.tensor([[0, 1, 0, 1]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    graph = build_relation_graph(speakers, mask, num_modalities=1, window=2, cross_modal=False)
    incoming = {
        s: SPEAKER_RELATIONS[t]
        for s, d, t in zip(*graph.edge_index.tolist(), graph.edge_type.tolist())
        if d == 1
    }
    assert incoming == {0: "other_speaker_past", 1: "self", 2: "other_speaker_future", 3: "same_speaker_future"}


@pytest.mark.parametrize("window", [0, 3, 20])
@pytest.mark.parametrize("cross_window", [0, 1])
def test_edge_count_is_linear_in_dialogue_length(window, cross_window):
    M = 3
    counts = {}
    for n in (50, 100, 200, 400):
        speakers = torch.randint(0, 2, (1, n))
        mask = torch.ones(1, n, dtype=torch.bool)
        graph = build_relation_graph(
            speakers, mask, num_modalities=M, window=window, cross_modal=True, cross_window=cross_window
        )
        counts[n] = graph.edge_index.shape[1]
        assert counts[n] == M * pair_count(n, window) + M * (M - 1) * pair_count(n, cross_window)
        assert counts[n] <= M * n * (2 * window + 1) + M * (M - 1) * n * (2 * cross_window + 1)
    # Constant increment per added utterance once n > window: linear, not quadratic.
    assert counts[400] - counts[200] == 2 * (counts[200] - counts[100]) == 4 * (counts[100] - counts[50])


def test_long_dialogue_builds_without_quadratic_memory():
    # An N x N intermediate would need 10^10 elements here; the slot table needs ~3 * 10^5.
    n = 100_000
    graph = build_relation_graph(
        torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool),
        num_modalities=1, window=1, cross_modal=False,
    )
    assert graph.edge_index.shape[1] == 3 * n - 2


def test_no_edges_touch_padding():
    speakers = torch.tensor([[0, 1, 0, 5, 5], [1, 1, 7, 7, 7]])
    mask = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    graph = build_relation_graph(speakers, mask, num_modalities=2, window=4, cross_modal=True, cross_window=3)
    assert graph.num_nodes == 2 * 5
    assert int(graph.edge_index.min()) >= 0 and int(graph.edge_index.max()) < graph.num_nodes
    # Dialogue 0 owns packed utterances 0..2, dialogue 1 owns 3..4: no edge crosses them.
    dialogue = torch.tensor([0, 0, 0, 1, 1]).repeat(2)
    assert torch.equal(dialogue[graph.edge_index[0]], dialogue[graph.edge_index[1]])


def test_empty_batch_gives_empty_graph():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    graph = build_relation_graph(torch.zeros(2, 3, dtype=torch.long), mask, num_modalities=3, window=2, cross_modal=True)
    assert graph.num_nodes == 0 and graph.edge_index.shape == (2, 0) and graph.edge_type.shape == (0,)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(num_modalities=0, window=1, cross_modal=False), "num_modalities"),
        (dict(num_modalities=1, window=-1, cross_modal=False), "window"),
        (dict(num_modalities=2, window=1, cross_modal=True, cross_window=-1), "cross_window"),
    ],
)
def test_build_rejects_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        build_relation_graph(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), **options)


def test_build_rejects_bad_masks():
    speakers = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="mask"):
        build_relation_graph(speakers, torch.tensor([[True, False, True]]), num_modalities=1, window=1, cross_modal=False)
    with pytest.raises(ValueError, match="mask"):
        build_relation_graph(speakers, torch.ones(1, 3), num_modalities=1, window=1, cross_modal=False)


def test_relation_names():
    assert num_graph_relations(num_modalities=3, cross_modal=True) == 21
    assert num_graph_relations(num_modalities=3, cross_modal=False) == 15
    names = graph_relation_names(num_modalities=3, cross_modal=True)
    assert len(names) == 21 and names[6] == "m1:same_speaker_past" and names[15] == "m0->m1" and names[-1] == "m2->m1"


# --------------------------------------------------------------------------- encoder module


@pytest.fixture
def config():
    return dict(dim=16, num_modalities=3, num_layers=2, num_heads=4, window=2, cross_modal=True, cross_window=1)


def make_inputs(*, lengths, dim, num_modalities, seed=0):
    generator = torch.Generator().manual_seed(seed)
    N = max(lengths)
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]
    streams = [torch.randn(len(lengths), N, dim, generator=generator) for _ in range(num_modalities)]
    speakers = torch.randint(0, 2, (len(lengths), N), generator=generator)
    return streams, speakers, mask


@pytest.mark.parametrize("cross_modal", [False, True])
@pytest.mark.parametrize("speaker_aware", [True, False])
def test_module_shapes_backward_and_zero_padding(config, cross_modal, speaker_aware):
    config.update(cross_modal=cross_modal, speaker_aware=speaker_aware, dropout=0.1)
    model = RelationGraph(**config)
    streams, speakers, mask = make_inputs(lengths=[5, 3, 7], dim=16, num_modalities=3)
    for stream in streams:
        stream.requires_grad_(True)
    outputs, attention = model(streams, speakers, mask)
    assert attention is None
    assert len(outputs) == 3
    for out in outputs:
        assert out.shape == (3, 7, 16)
        assert torch.isfinite(out).all()
        assert torch.all(out[~mask] == 0)
    sum(out.pow(2).sum() for out in outputs).backward()
    for stream in streams:
        assert stream.grad is not None and torch.isfinite(stream.grad).all()
        assert torch.all(stream.grad[~mask] == 0)  # padding content never reaches the output
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("cross_modal", [False, True])
def test_module_padding_invariance(config, cross_modal):
    config.update(cross_modal=cross_modal)
    model = RelationGraph(**config).eval()
    alone, speakers_alone, mask_alone = make_inputs(lengths=[5], dim=16, num_modalities=3, seed=1)
    other, speakers_other, _ = make_inputs(lengths=[8], dim=16, num_modalities=3, seed=2)
    # Dialogue of length 5 padded to 8 (padding filled with garbage) next to one of length 8.
    streams = [torch.stack([torch.cat([a[0], 100 * torch.randn(3, 16)]), o[0]]) for a, o in zip(alone, other)]
    speakers = torch.stack([torch.cat([speakers_alone[0], torch.tensor([9, 9, 9])]), speakers_other[0]])
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    with torch.no_grad():
        expected, _ = model(alone, speakers_alone, mask_alone)
        batched, _ = model(streams, speakers, mask)
        swapped, _ = model([s.flip(0) for s in streams], speakers.flip(0), mask.flip(0))
    for exp, got, got_swapped in zip(expected, batched, swapped):
        torch.testing.assert_close(got[0, :5], exp[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_swapped[1, :5], exp[0], atol=1e-5, rtol=1e-5)
        assert torch.all(got[0, 5:] == 0)


@pytest.mark.parametrize("cross_modal", [False, True])
def test_window_zero_isolates_utterances(config, cross_modal):
    config.update(window=0, cross_modal=cross_modal, cross_window=0)
    model = RelationGraph(**config).eval()
    streams, speakers, mask = make_inputs(lengths=[4], dim=16, num_modalities=3)
    changed = [s.clone() for s in streams]
    for s in changed:
        s[0, 1] += 5.0
    with torch.no_grad():
        before, _ = model(streams, speakers, mask)
        after, _ = model(changed, speakers, mask)
    for b, a in zip(before, after):
        torch.testing.assert_close(a[0, 0], b[0, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[0, 2:], b[0, 2:], atol=1e-6, rtol=0)
        assert not torch.allclose(a[0, 1], b[0, 1])


def test_window_reaches_neighbours_and_cross_edges_mix_modalities(config):
    config.update(window=1, cross_modal=True, cross_window=0, num_layers=1)
    model = RelationGraph(**config).eval()
    streams, speakers, mask = make_inputs(lengths=[4], dim=16, num_modalities=3)
    changed = [s.clone() for s in streams]
    changed[0][0, 1] += 5.0  # modality 0, utterance 1
    with torch.no_grad():
        before, _ = model(streams, speakers, mask)
        after, _ = model(changed, speakers, mask)
    assert not torch.allclose(after[0][0, 0], before[0][0, 0])  # neighbour in window
    torch.testing.assert_close(after[0][0, 3], before[0][0, 3], atol=1e-6, rtol=0)  # outside window
    assert not torch.allclose(after[1][0, 1], before[1][0, 1])  # cross edge, same utterance
    torch.testing.assert_close(after[1][0, 0], before[1][0, 0], atol=1e-6, rtol=0)  # cross_window=0


def test_module_returns_interpretable_attention(config):
    model = RelationGraph(**config).eval()
    streams, speakers, mask = make_inputs(lengths=[3, 5], dim=16, num_modalities=3)
    _, attention = model(streams, speakers, mask, return_attention=True)
    assert isinstance(attention, GraphAttention)
    E = attention.edge_index.shape[1]
    assert len(attention.attention) == config["num_layers"]
    assert all(a.shape == (E, config["num_heads"]) and not a.requires_grad for a in attention.attention)
    V = 3 * 8
    assert attention.node_modality.shape == attention.node_batch.shape == attention.node_utterance.shape == (V,)
    assert torch.all(mask[attention.node_batch, attention.node_utterance])
    src, dst = attention.edge_index
    assert torch.equal(attention.node_batch[src], attention.node_batch[dst])
    assert torch.all((attention.node_utterance[src] - attention.node_utterance[dst]).abs() <= config["window"])
    assert len(attention.relation_names) == model.num_relations
    sums = torch.zeros(V, config["num_heads"]).index_add_(0, dst, attention.attention[0])
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_module_parameters_finite_after_init_and_reset(config):
    model = RelationGraph(**config, num_bases=3)
    assert list(model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "override, name",
    [
        (dict(num_layers=0), "num_layers"),
        (dict(window=-1), "window"),
        (dict(cross_window=-2), "cross_window"),
        (dict(num_modalities=0), "num_modalities"),
        (dict(num_heads=5), "num_heads"),
        (dict(dim=0), "dim"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_module_rejects_bad_options(config, override, name):
    config.update(override)
    with pytest.raises(ValueError, match=name):
        RelationGraph(**config)


def test_module_rejects_bad_streams(config):
    model = RelationGraph(**config)
    streams, speakers, mask = make_inputs(lengths=[3], dim=16, num_modalities=3)
    with pytest.raises(ValueError, match="streams"):
        model(streams[:2], speakers, mask)
    with pytest.raises(ValueError, match="streams"):
        model([s[..., :8] for s in streams], speakers, mask)
