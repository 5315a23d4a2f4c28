"""Performance paths give the plain path's results: chunked attention with dropout, activation
checkpointing, fast dropout masks, bf16 autocast, torch.compile (``training.precision`` and
``training.compile``)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import redifu.nn.kernels.attention as mea
from conftest import TINY_DIMS, TINY_SYNTHETIC, make_tiny_config
from redifu.config import load_config
from redifu.model import ReDiFu
from redifu.nn.attention import MultiHeadAttention
from redifu.nn.differential_attention import DifferentialAttention, DifferentialDenoiser, TemporalDifferentialAttention
from redifu.nn.fusion import SymmetricFusion, TextGuidedFusion
from redifu.nn.kernels.dropout_masks import fast_keep_mask
from redifu.nn.relation_graph import RelationGraph
from redifu.training.loss import redifu_loss
from redifu.training.system import ReDiFuSystem, autocast_context, lightning_precision

needs_exact_chunks = pytest.mark.skipif(
    not mea.chunked_dropout_is_exact(), reason="this build's CPU Bernoulli kernel reseeds per call"
)


def _qkv(b, h, n, m, d, e, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g), torch.randn(b, h, m, d, generator=g),
               torch.randn(b, h, m, e, generator=g))
    mask = torch.ones(b, m, dtype=torch.bool)
    mask[0, m - max(1, m // 3):] = False  # padding in the first row
    return [t.requires_grad_() for t in (q, k, v)], mask


@needs_exact_chunks
@pytest.mark.parametrize("shape,budget", [
    ((3, 4, 7, 7, 8, 8), 50),  # several heads per chunk
    ((2, 3, 20, 9, 4, 6), 30),  # several chunks of query rows inside one head
    ((2, 2, 5, 5, 4, 4), 1 << 22),  # one chunk
    ((1, 1, 1, 1, 2, 2), 1),  # degenerate
])
def test_chunked_dropout_attention_equals_pytorch_math_path(shape, budget):
    (q, k, v), mask = _qkv(*shape)
    grad = torch.randn(*shape[:3], shape[5], generator=torch.Generator().manual_seed(9))
    torch.manual_seed(5)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=0.4, scale=0.3)
    state_after = torch.get_rng_state()
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    torch.manual_seed(5)
    out = mea.masked_attention(q, k, v, mask, dropout_p=0.4, scale=0.3, budget=budget)
    assert torch.equal(torch.get_rng_state(), state_after)  # same draws, nothing more
    grads = torch.autograd.grad(out, (q, k, v), grad)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_masked_attention_without_dropout_is_pytorch_kernel():
    (q, k, v), mask = _qkv(2, 3, 6, 6, 4, 4)
    out = mea.masked_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]))


def _train_step(model, batch, *, seed=3):
    torch.manual_seed(seed)
    output = model(batch.features, batch.speakers, batch.mask)
    loss, _ = redifu_loss(output, batch.labels, aux_weight=0.3)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_exact_chunks
@pytest.mark.parametrize("denoiser,fusion", [("dual", "text_guided"), ("temporal", "symmetric")])
def test_training_step_equals_plain_attention_path(tiny_batch, monkeypatch, denoiser, fusion):
    """Same seed, same dropout masks: logits and every gradient match PyTorch's math path."""
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(dropout=0.5, denoiser=denoiser, fusion=fusion)).train()
    logits, grads = _train_step(model, tiny_batch)
    monkeypatch.setattr(mea, "chunked_dropout_is_exact", lambda: False)  # PyTorch's own path
    plain_logits, plain_grads = _train_step(model, tiny_batch)
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name,expected", [("bf16", "bf16-mixed"), ("32", "32-true"), ("bf16-mixed", "bf16-mixed"),
                                           ("32-true", "32-true")])
def test_precision_names(name, expected):
    assert lightning_precision(name) == expected


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_autocast_matches_fp32_within_bf16_tolerance(tiny_batch):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config()).eval()
    with torch.no_grad():
        reference = model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask).logits.softmax(-1)
        with autocast_context("bf16", "cpu"):
            low = model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask).logits.float().softmax(-1)
    real = tiny_batch.mask
    torch.testing.assert_close(low[real], reference[real], atol=3e-2, rtol=0)
    assert (low[real].argmax(-1) == reference[real].argmax(-1)).float().mean() > 0.9
    model.train()
    with autocast_context("bf16", "cpu"):
        output = model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask)
        loss, _ = redifu_loss(output, tiny_batch.labels, aux_weight=0.3)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unknown_precision_has_no_autocast():
    with pytest.raises(ValueError, match="training.precision"):
        autocast_context("8-bit", "cpu")


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_training_run(tmp_path):
    from redifu.training.run import train

    tiny = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()]
    config = load_config(None, tiny + ["model.hidden_size=16", "model.num_heads=2", "model.fusion_layers=1",
                                       "model.graph_layers=1", "training.max_epochs=1", "training.batch_size=6",
                                       "training.progress_bar=false", "training.threads=1", "training.logger=none",
                                       "training.precision=bf16"])
    metrics = train(config, tmp_path / "run")
    assert len(metrics["history"]) == 1
    # the saved (float32) checkpoint reproduces the reported test metrics
    from redifu.checkpoint import load_checkpoint
    from redifu.data.loading import load_corpus
    from redifu.training.evaluation import evaluate_split

    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint")
    again = evaluate_split(checkpoint.model, load_corpus(config.data).splits["test"], checkpoint.classes)
    assert again["weighted_f1"] == metrics["test"]["weighted_f1"]


def test_compile_flag_keeps_the_plain_model_in_the_module_tree(tiny_config):
    config = load_config(None, ["training.compile=true"])
    system = ReDiFuSystem(model_config=tiny_config.to_dict(), training=config.to_dict()["training"])
    assert system.compiled_model is not None
    assert all(not key.startswith("compiled_model") for key in system.state_dict())
    plain = ReDiFuSystem(model_config=tiny_config.to_dict(), training=load_config().to_dict()["training"])
    assert plain.compiled_model is None


@pytest.mark.slow
def test_compiled_training_step_equals_eager(tiny_batch):
    """torch.compile (inductor) gives the eager logits and gradients within float tolerance."""
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(dropout=0.0)).train()
    logits, grads = _train_step(model, tiny_batch)
    compiled_logits, compiled_grads = _train_step(torch.compile(model), tiny_batch)
    torch.testing.assert_close(compiled_logits, logits, rtol=1e-4, atol=1e-4)
    for name, grad in grads.items():
        key = name if name in compiled_grads else f"_orig_mod.{name}"
        torch.testing.assert_close(compiled_grads[key], grad, rtol=1e-3, atol=1e-4, msg=name)


def _saved_for_backward(run):
    """Elements of the tensors autograd keeps for backward while ``run()`` records a graph
    (what activation checkpointing exists to reduce), and ``run()``'s result."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return sum(saved), result


CHECKPOINTABLE = {
    "denoiser": lambda **o: DifferentialDenoiser(dim=16, num_heads=2, num_layers=2, dropout=0.5, **o),
    "graph": lambda **o: RelationGraph(dim=16, num_modalities=3, num_layers=2, num_heads=2, window=2,
                                       cross_modal=True, dropout=0.5, **o),
    "symmetric": lambda **o: SymmetricFusion(dim=16, modalities=("text", "audio", "visual"), num_layers=2,
                                             num_heads=2, dropout=0.5, **o),
    "text_guided": lambda **o: TextGuidedFusion(dim=16, modalities=("text", "audio", "visual"), num_layers=2,
                                                num_heads=2, dropout=0.5, **o),
}


def _run_layer(name, module, inputs):
    streams, speakers, mask = inputs
    if name == "denoiser":
        return module(streams[0], mask)[0]
    if name == "graph":
        return torch.stack(module(streams, speakers, mask)[0])
    return module(dict(zip(("text", "audio", "visual"), streams)), mask).fused


@pytest.mark.parametrize("name", sorted(CHECKPOINTABLE))
def test_each_checkpointable_layer_keeps_less_and_gives_the_same_step(name):
    """``activation_checkpointing=True`` keeps less for backward; recomputation redraws the
    same dropout masks, so outputs and gradients are those without it."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    inputs = ([torch.randn(2, 7, 16, generator=g) for _ in range(3)], torch.randint(0, 2, (2, 7), generator=g), mask)
    torch.manual_seed(0)
    plain = CHECKPOINTABLE[name]().train()
    torch.manual_seed(0)
    checkpointed = CHECKPOINTABLE[name](activation_checkpointing=True).train()
    results = []
    for module in (plain, checkpointed):
        torch.manual_seed(4)
        kept, out = _saved_for_backward(lambda: _run_layer(name, module, inputs))
        out.pow(2).sum().backward()
        results.append((kept, out.detach(), [p.grad for p in module.parameters()]))
    (kept, out, grads), (kept_checkpointed, out_checkpointed, grads_checkpointed) = results
    assert kept_checkpointed < 0.75 * kept  # symmetric fusion checkpoints its self-attention blocks only
    torch.testing.assert_close(out_checkpointed, out, rtol=1e-6, atol=1e-6)
    assert grads and all(g is not None for g in grads)
    for got, want in zip(grads_checkpointed, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("denoiser,fusion", [("dual", "text_guided"), ("temporal", "symmetric")])
def test_activation_checkpointing_gives_the_same_training_step(tiny_batch, denoiser, fusion):
    """The whole model: recomputed layers draw the same dropout masks, same logits and gradients."""
    config = make_tiny_config(dropout=0.5, denoiser=denoiser, fusion=fusion)
    torch.manual_seed(0)
    model = ReDiFu(config).train()
    logits, grads = _train_step(model, tiny_batch)
    torch.manual_seed(0)
    checkpointed = ReDiFu(config, activation_checkpointing=True).train()
    checkpointed_logits, checkpointed_grads = _train_step(checkpointed, tiny_batch)
    torch.testing.assert_close(checkpointed_logits, logits, rtol=1e-6, atol=1e-6)
    assert grads and grads.keys() == checkpointed_grads.keys()
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _layers(model, types):
    layers = [m for m in model.modules() if isinstance(m, types)]
    assert layers, f"no {types} in the model"
    return layers


CHECKPOINTED_TYPES = (DifferentialDenoiser, RelationGraph, SymmetricFusion, TextGuidedFusion)
ATTENTION_TYPES = (DifferentialAttention, TemporalDifferentialAttention, MultiHeadAttention)


@pytest.mark.parametrize("denoiser,fusion", [("dual", "text_guided"), ("temporal", "symmetric")])
def test_training_options_reach_every_layer_that_takes_them(denoiser, fusion):
    """The training config's options go through ReDiFuSystem to each layer's constructor."""
    config = make_tiny_config(denoiser=denoiser, fusion=fusion)
    options = load_config(None, ["training.activation_checkpointing=true", "training.fast_dropout=true"])
    system = ReDiFuSystem(model_config=config.to_dict(), training=options.to_dict()["training"])
    assert {type(m) for m in _layers(system.model, CHECKPOINTED_TYPES)} >= {DifferentialDenoiser, RelationGraph}
    assert all(m.activation_checkpointing for m in _layers(system.model, CHECKPOINTED_TYPES))
    assert all(m.fast_dropout for m in _layers(system.model, ATTENTION_TYPES))
    plain = ReDiFuSystem(model_config=config.to_dict(), training=load_config().to_dict()["training"])
    assert not any(m.activation_checkpointing for m in _layers(plain.model, CHECKPOINTED_TYPES))
    assert not any(m.fast_dropout for m in _layers(plain.model, ATTENTION_TYPES))


def test_wide_values_without_dropout_equal_the_math_path():
    (q, k, v), mask = _qkv(2, 3, 6, 6, 4, 8)
    out = mea.masked_attention(q, k, v, mask, scale=0.4)
    scores = (q @ k.transpose(-1, -2) * 0.4).masked_fill(~mask[:, None, None, :], float("-inf"))
    torch.testing.assert_close(out, scores.softmax(-1) @ v, rtol=1e-5, atol=1e-5)


def test_fast_keep_mask_is_bernoulli_with_the_keep_probability():
    torch.manual_seed(0)
    for keep in (0.5, 0.4, 0.9):
        mask = fast_keep_mask((300, 1001), keep)
        assert mask.shape == (300, 1001) and mask.dtype == torch.bool
        assert abs(mask.float().mean().item() - keep) < 0.005  # 300,300 draws: sd < 0.001
    first = fast_keep_mask((64,), 0.5)
    assert not torch.equal(first, fast_keep_mask((64,), 0.5))  # fresh draws each call
    torch.manual_seed(3)
    again = fast_keep_mask((7, 5), 0.3)
    torch.manual_seed(3)
    assert torch.equal(again, fast_keep_mask((7, 5), 0.3))  # the default generator's seed decides


def test_fast_dropout_attention_uses_its_mask_in_forward_and_backward():
    """One chunk: the output and gradients are the math path's with the fast mask."""
    (q, k, v), mask = _qkv(2, 3, 6, 6, 4, 8)
    grad = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(5)
    noise = fast_keep_mask((2 * 3, 6, 6), 0.6).view(2, 3, 6, 6).float() / 0.6
    scores = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = (scores.softmax(-1) * noise) @ v
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    torch.manual_seed(5)
    out = mea.masked_attention(q, k, v, mask, dropout_p=0.4, scale=0.3, fast_dropout=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fast_dropout_keeps_the_expectation_and_works_with_checkpointing(tiny_batch):
    (q, k, v), mask = _qkv(1, 2, 5, 5, 4, 4)
    plain = mea.masked_attention(q, k, v, mask).detach()
    draws = torch.stack([mea.masked_attention(q, k, v, mask, dropout_p=0.3, fast_dropout=True).detach()
                         for _ in range(3000)])
    torch.testing.assert_close(draws.mean(0), plain, atol=0.05, rtol=0)

    config = make_tiny_config(dropout=0.5)
    models = {}
    for name, options in {"plain": {}, "fast": dict(fast_dropout=True),
                          "fast+checkpointing": dict(fast_dropout=True, activation_checkpointing=True)}.items():
        torch.manual_seed(0)
        models[name] = ReDiFu(config, **options).train()
    logits, grads = _train_step(models["fast"], tiny_batch)
    assert not torch.allclose(_train_step(models["plain"], tiny_batch)[0], logits)  # other masks, other step
    checkpointed_logits, checkpointed_grads = _train_step(models["fast+checkpointing"], tiny_batch)
    torch.testing.assert_close(checkpointed_logits, logits, rtol=1e-6, atol=1e-6)  # recomputation redraws them
    assert grads
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


ATTENTIONS = {
    "multi_head": lambda **o: MultiHeadAttention(dim=16, num_heads=2, dropout=0.5, **o),
    "dual": lambda **o: DifferentialAttention(dim=16, num_heads=2, dropout=0.5, **o),
    "temporal": lambda **o: TemporalDifferentialAttention(dim=16, num_heads=2, dropout=0.5, **o),
}


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_fast_dropout_changes_only_the_training_masks_of_each_attention(name):
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    torch.manual_seed(0)
    plain = ATTENTIONS[name]()
    torch.manual_seed(0)
    fast = ATTENTIONS[name](fast_dropout=True)
    outputs = {}
    for mode in ("train", "eval"):
        for label, module in (("plain", plain), ("fast", fast)):
            getattr(module, mode)()
            torch.manual_seed(1)
            with torch.no_grad():
                outputs[mode, label] = module(x, mask)[0]
    torch.testing.assert_close(outputs["eval", "fast"], outputs["eval", "plain"])
    assert not torch.allclose(outputs["train", "fast"], outputs["train", "plain"])
