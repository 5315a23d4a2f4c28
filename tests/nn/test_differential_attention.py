"""Tests of the differential-attention denoiser (ReDiFu step 2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from redifu.nn.differential_attention import (
    DifferentialAttention,
    DifferentialDenoiser,
    DifferentialTransformerLayer,
    SwiGLUFeedForward,
    TemporalDifferentialAttention,
    lambda_init_for_layer,
)
from redifu.nn.positional import apply_rotary

DIM = 16
HEADS = 2
VARIANTS = ["dual", "temporal"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_attention(variant: str, **kwargs) -> DifferentialAttention | TemporalDifferentialAttention:
    kwargs.setdefault("dim", DIM)
    kwargs.setdefault("num_heads", HEADS)
    if variant == "dual":
        return DifferentialAttention(**kwargs)
    return TemporalDifferentialAttention(**kwargs)


def make_batch(lengths: list[int], *, dim: int = DIM, garbage: float = 3.0) -> tuple[Tensor, Tensor]:
    """Padded batch; padding holds large random values so that any leak shows up."""
    n = max(lengths)
    x = torch.randn(len(lengths), n, dim)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]  # (B, N)
    x = torch.where(mask[..., None], x, garbage * torch.randn_like(x))
    return x, mask


def masked_softmax(scores: Tensor, key_mask: Tensor) -> Tensor:
    """Softmax over the keys allowed by ``key_mask`` (B, N); rows with no key give zeros."""
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1)
    return torch.nan_to_num(probs, nan=0.0)


def linear(layer: torch.nn.Linear, x: Tensor) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def rms_norm(h: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(module, t: Tensor) -> Tensor:
    if module.rotary is None:
        return t
    cos, sin = module.rotary(t.shape[-2], device=t.device, dtype=t.dtype)
    return apply_rotary(t, cos, sin)


def reference_maps(module, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(A1, A2, lambda broadcastable to (B, H, N, N), V), computed from the module's weights."""
    B, N, D = x.shape
    H, d = module.num_heads, module.head_dim
    if isinstance(module, DifferentialAttention):
        q = linear(module.q_proj, x).reshape(B, N, H, 2, d)
        k = linear(module.k_proj, x).reshape(B, N, H, 2, d)
        q1, q2 = (rotate(module, q[:, :, :, i].transpose(1, 2)) for i in (0, 1))
        k1, k2 = (rotate(module, k[:, :, :, i].transpose(1, 2)) for i in (0, 1))
        v = linear(module.v_proj, x).reshape(B, N, H, 2 * d).transpose(1, 2)
        a1 = masked_softmax(q1 @ k1.transpose(-1, -2) / math.sqrt(d), mask)
        a2 = masked_softmax(q2 @ k2.transpose(-1, -2) / math.sqrt(d), mask)
        lam = (
            torch.exp((module.lambda_q1 * module.lambda_k1).sum())
            - torch.exp((module.lambda_q2 * module.lambda_k2).sum())
            + (0.8 - 0.6 * math.exp(-0.3 * module.layer_index))
        )
        return a1, a2, lam, v
    q = rotate(module, linear(module.q_proj, x).reshape(B, N, H, d).transpose(1, 2))
    k = rotate(module, linear(module.k_proj, x).reshape(B, N, H, d).transpose(1, 2))
    v = linear(module.v_proj, x).reshape(B, N, H, d).transpose(1, 2)
    a1 = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(d), mask)
    # column j of map 2 scores the key of utterance j - 1; column 0 has no previous utterance
    scores2 = torch.full((B, H, N, N), float("-inf"))
    scores2[..., 1:] = q @ k[:, :, :-1].transpose(-1, -2) / math.sqrt(d)
    valid2 = torch.zeros_like(mask)
    valid2[:, 1:] = mask[:, 1:] & mask[:, :-1]
    a2 = masked_softmax(scores2, valid2)
    lam = torch.sigmoid(module.lambda_logit).view(1, H, 1, 1)
    return a1, a2, lam, v


def reference_forward(module, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    a1, a2, lam, v = reference_maps(module, x, mask)
    attn = a1 - lam * a2
    heads = rms_norm(attn @ v, module.head_norm.weight) * (1 - module.lambda_init)
    B, N, D = x.shape
    return linear(module.out_proj, heads.transpose(1, 2).reshape(B, N, D)), attn


def assert_grads_finite(module: torch.nn.Module, *tensors: Tensor) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all()


# --------------------------------------------------------------------------- shapes, backward


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("return_attention", [False, True])
def test_attention_shapes_and_backward(variant: str, rotary: bool, return_attention: bool) -> None:
    module = make_attention(variant, rotary=rotary, dropout=0.1)
    x, mask = make_batch([4, 2, 3])
    x.requires_grad_(True)
    out, attn = module(x, mask, return_attention=return_attention)
    assert out.shape == (3, 4, DIM)
    assert torch.isfinite(out).all()  # padded query rows included
    if return_attention:
        assert attn is not None and attn.shape == (3, HEADS, 4, 4)
        loss = out.sum() + attn.sum()
    else:
        assert attn is None
        loss = out.sum()
    loss.backward()
    assert_grads_finite(module, x)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("return_attention", [False, True])
def test_layer_and_denoiser_shapes_and_backward(variant: str, rotary: bool, return_attention: bool) -> None:
    x, mask = make_batch([5, 3])
    x.requires_grad_(True)
    layer = DifferentialTransformerLayer(dim=DIM, num_heads=HEADS, variant=variant, rotary=rotary, dropout=0.1)
    out, attn = layer(x, mask, return_attention=return_attention)
    assert out.shape == x.shape
    assert (attn is not None) == return_attention
    if return_attention:
        assert attn.shape == (2, HEADS, 5, 5)
    out.sum().backward()
    assert_grads_finite(layer, x)

    x.grad = None
    denoiser = DifferentialDenoiser(
        dim=DIM, num_heads=HEADS, num_layers=2, variant=variant, rotary=rotary, dropout=0.1
    )
    out, maps = denoiser(x, mask, return_attention=return_attention)
    assert out.shape == x.shape
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))  # nothing at padding
    if return_attention:
        assert isinstance(maps, list) and len(maps) == 2
        assert all(m.shape == (2, HEADS, 5, 5) for m in maps)
    else:
        assert maps is None
    out.pow(2).sum().backward()
    assert_grads_finite(denoiser, x)


def test_swiglu_hidden_size_is_rounded() -> None:
    layer = DifferentialTransformerLayer(dim=DIM, num_heads=HEADS, ffn_mult=8 / 3)
    assert layer.ffn.down.in_features == round(DIM * 8 / 3)
    ffn = SwiGLUFeedForward(dim=4, hidden_dim=6)
    assert ffn(torch.randn(2, 3, 4)).shape == (2, 3, 4)


# --------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_path_matches_explicit_maps(variant: str, rotary: bool, bias: bool) -> None:
    module = make_attention(variant, rotary=rotary, bias=bias).eval()
    with torch.no_grad():  # move lambda away from its init so a wrong lambda would show
        if variant == "dual":
            module.lambda_q1.normal_(0, 0.5)
            module.lambda_k1.normal_(0, 0.5)
        else:
            module.lambda_logit.copy_(torch.tensor([-1.0, 2.0]))
        module.head_norm.weight.uniform_(0.5, 1.5)
    x, mask = make_batch([6, 3, 1])
    expected_out, expected_attn = reference_forward(module, x, mask)
    fused, none = module(x, mask)
    explicit, attn = module(x, mask, return_attention=True)
    assert none is None
    real = mask
    torch.testing.assert_close(fused[real], expected_out[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit[real], expected_out[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, expected_attn, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rotary", [False, True])
def test_identical_halves_give_scaled_single_map(rotary: bool) -> None:
    module = DifferentialAttention(dim=DIM, num_heads=HEADS, rotary=rotary).eval()
    H, d = HEADS, module.head_dim
    with torch.no_grad():
        for proj in (module.q_proj, module.k_proj):
            w = proj.weight.view(H, 2, d, DIM)  # (H, 2, d, D) output rows per head half
            w[:, 1] = w[:, 0]
        module.lambda_q1.normal_(0, 0.5)  # a lambda clearly different from lambda_init
    x, mask = make_batch([5, 3])
    with torch.no_grad():
        heads, _ = module._attend(x, mask)
        a1, a2, lam, v = reference_maps(module, x, mask)
    torch.testing.assert_close(a1, a2)
    single = a1 @ v  # plain single-map attention
    assert abs(lam.item() - module.lambda_init) > 1e-3
    torch.testing.assert_close(heads, (1 - lam) * single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("fast_dropout", [False, True])
@pytest.mark.parametrize("draw", range(5))
def test_identical_halves_give_scaled_single_map_in_training(rotary: bool, fast_dropout: bool, draw: int) -> None:
    """With dropout on, the difference still cancels: identical halves give (1 - lambda) times
    single-map attention *with the same dropout draw*, before the per-head normalisation.
    Independent masks per map (the defect of issue 11) break this for every draw."""
    module = DifferentialAttention(dim=DIM, num_heads=HEADS, rotary=rotary, dropout=0.5,
                                   fast_dropout=fast_dropout).train()
    H, d = HEADS, module.head_dim
    with torch.no_grad():
        for proj in (module.q_proj, module.k_proj):
            w = proj.weight.view(H, 2, d, DIM)
            w[:, 1] = w[:, 0]
        module.lambda_q1.normal_(0, 0.5)
    x, mask = make_batch([7, 4])
    with torch.no_grad():
        torch.manual_seed(100 + draw)
        heads, _ = module._attend(x, mask)
        after = torch.get_rng_state()
        a1, _, lam, v = reference_maps(module, x, mask)
        torch.manual_seed(100 + draw)
        module.eval()
        clean, _ = module._attend(x, mask)
        module.train()
    assert not torch.allclose(heads, clean, atol=1e-3)  # dropout did act
    # the single map with one draw of the same mask, as the layer's kernel draws it
    torch.manual_seed(100 + draw)
    from redifu.nn.kernels.attention import masked_attention

    with torch.no_grad():
        q1 = rotate(module, linear(module.q_proj, x).view(*x.shape[:2], H, 2, d)[:, :, :, 0].transpose(1, 2))
        k1 = rotate(module, linear(module.k_proj, x).view(*x.shape[:2], H, 2, d)[:, :, :, 0].transpose(1, 2))
        single = masked_attention(q1, k1, v, mask, dropout_p=0.5, scale=module.scale, fast_dropout=fast_dropout)
    assert torch.equal(torch.get_rng_state(), after)  # one draw's worth of random numbers
    torch.testing.assert_close(heads, (1 - lam) * single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_dropout_acts_on_the_differential_map(variant: str) -> None:
    """The fused training path equals ``dropout(A1 - lambda A2) @ v`` with the same draw."""
    module = make_attention(variant, dropout=0.4).train()
    x, mask = make_batch([6, 3, 1])
    with torch.no_grad():
        torch.manual_seed(7)
        fused, _ = module._attend(x, mask)
        torch.manual_seed(7)
        explicit, _ = module._attend(x, mask, return_maps=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- masking, padding


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_keys_get_exactly_zero_weight(variant: str) -> None:
    module = make_attention(variant).eval()
    x, mask = make_batch([5, 2, 4])
    _, attn = module(x, mask, return_attention=True)
    _, (a1, a2) = module._attend(x, mask, return_maps=True)
    for m in (attn, a1, a2):
        padded_columns = (~mask)[:, None, None, :].expand_as(m)
        assert torch.all(m[padded_columns] == 0)
    # each real row of a map sums to one over the real keys
    row_sums = a1.sum(-1)[mask[:, None, :].expand(-1, HEADS, -1)]
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rotary", [False, True])
def test_padding_invariance(variant: str, rotary: bool) -> None:
    lengths = [2, 5, 1]
    x, mask = make_batch(lengths)
    attention = make_attention(variant, rotary=rotary).eval()
    denoiser = DifferentialDenoiser(
        dim=DIM, num_heads=HEADS, num_layers=2, variant=variant, rotary=rotary
    ).eval()
    for module in (attention, denoiser):
        fused = module(x, mask)[0]  # sdpa path
        batched, maps = module(x, mask, return_attention=True)  # explicit-map path
        last_map = maps[-1] if isinstance(maps, list) else maps
        for b, n in enumerate(lengths):
            alone_fused = module(x[b : b + 1, :n], mask[b : b + 1, :n])[0]
            alone, alone_maps = module(x[b : b + 1, :n], mask[b : b + 1, :n], return_attention=True)
            alone_map = alone_maps[-1] if isinstance(alone_maps, list) else alone_maps
            torch.testing.assert_close(fused[b, :n], alone_fused[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched[b, :n], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(last_map[b, :, :n, :n], alone_map[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_padded_dialogue_is_finite(variant: str) -> None:
    module = make_attention(variant)
    x, mask = make_batch([3, 3])
    mask[1] = False
    x.requires_grad_(True)
    out, attn = module(x, mask, return_attention=True)
    assert torch.isfinite(out).all() and torch.isfinite(attn).all()
    (out.sum() + attn.sum()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_causal(variant: str) -> None:
    x, mask = make_batch([5])
    x.requires_grad_(True)
    for module in (
        make_attention(variant),
        DifferentialDenoiser(dim=DIM, num_heads=HEADS, num_layers=2, variant=variant),
    ):
        out, _ = module(x, mask)
        # a random read-out: a plain sum of a LayerNorm output is identically zero
        (grad,) = torch.autograd.grad((out[0, 0] * torch.randn(DIM)).sum(), x)
        assert grad[0, 1:].abs().sum() > 0  # position 0 sees later utterances
        assert grad[0, -1].abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_dropout_only_in_training(variant: str) -> None:
    module = make_attention(variant, dropout=0.5)
    x, mask = make_batch([6, 4])
    module.train()
    first, _ = module(x, mask)
    second, _ = module(x, mask)
    assert not torch.allclose(first, second)
    module.eval()
    torch.testing.assert_close(module(x, mask)[0], module(x, mask)[0], atol=0, rtol=0)
    torch.testing.assert_close(
        module(x, mask)[0], module(x, mask, return_attention=True)[0], atol=1e-5, rtol=1e-5
    )


# --------------------------------------------------------------------------- temporal variant


@pytest.mark.parametrize("rotary", [False, True])
def test_temporal_second_map_has_no_wraparound(rotary: bool) -> None:
    module = TemporalDifferentialAttention(dim=DIM, num_heads=HEADS, rotary=rotary).eval()
    x, mask = make_batch([5])
    _, (_, a2) = module._attend(x, mask, return_maps=True)
    # column 0 (the first utterance has no previous one) is never used by map 2
    assert torch.all(a2[..., 0] == 0)
    torch.testing.assert_close(a2, reference_maps(module, x, mask)[1])

    # The last utterance's key is nobody's "previous key", so changing the last utterance must
    # leave map 2 untouched at every earlier query row. torch.roll would have fed the last key
    # into column 0 and the softmax normaliser of every row.
    changed = x.clone()
    changed[0, -1] = torch.randn(DIM) * 5
    _, (_, a2_changed) = module._attend(changed, mask, return_maps=True)
    torch.testing.assert_close(a2_changed[:, :, :-1], a2[:, :, :-1], atol=0, rtol=0)
    assert torch.all(a2_changed[..., 0] == 0)

    # the check above is discriminative: a wrap-around second map does change
    def rolled_map(inp: Tensor) -> Tensor:
        q = rotate(module, linear(module.q_proj, inp).view(1, 5, HEADS, -1).transpose(1, 2))
        k = rotate(module, linear(module.k_proj, inp).view(1, 5, HEADS, -1).transpose(1, 2))
        return (q @ torch.roll(k, 1, dims=2).transpose(-1, -2)).softmax(-1)

    assert not torch.allclose(rolled_map(changed)[:, :, :-1], rolled_map(x)[:, :, :-1])


def test_temporal_single_utterance_is_single_map_attention() -> None:
    module = TemporalDifferentialAttention(dim=DIM, num_heads=HEADS).eval()
    x, mask = make_batch([1])
    x.requires_grad_(True)
    heads, (a1, a2) = module._attend(x, mask, return_maps=True)
    fused, _ = module._attend(x, mask)
    assert torch.isfinite(heads).all() and torch.isfinite(fused).all()
    assert torch.all(a2 == 0)  # no previous utterance: map 2 contributes nothing
    v = linear(module.v_proj, x).view(1, 1, HEADS, -1).transpose(1, 2)
    torch.testing.assert_close(fused, v)  # one key: single-map attention returns its value
    torch.testing.assert_close(heads, v)
    out, attn = module(x, mask, return_attention=True)
    expected = rms_norm(v, module.head_norm.weight) * (1 - module.lambda_init)
    expected = linear(module.out_proj, expected.transpose(1, 2).reshape(1, 1, DIM))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attn, torch.ones_like(attn))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(module.lambda_logit.grad).all()

    # and inside a padded batch next to a longer dialogue
    xb, maskb = make_batch([1, 4])
    out_b, _ = module(xb, maskb)
    assert torch.isfinite(out_b).all()
    torch.testing.assert_close(out_b[0, :1], module(xb[:1, :1], maskb[:1, :1])[0][0])


def test_temporal_lambda_is_per_head_in_unit_interval() -> None:
    module = TemporalDifferentialAttention(dim=DIM, num_heads=4, lambda_init=0.3)
    lam = module.differential_lambda()
    assert lam.shape == (4,)
    torch.testing.assert_close(lam, torch.full((4,), 0.3))
    with torch.no_grad():
        module.lambda_logit.copy_(torch.tensor([-50.0, -1.0, 1.0, 50.0]))
    lam = module.differential_lambda()
    assert torch.all((lam >= 0) & (lam <= 1))


# --------------------------------------------------------------------------- init, options


@pytest.mark.parametrize("layer_index", [0, 1, 3, 10])
def test_lambda_init_follows_depth(layer_index: int) -> None:
    expected = 0.8 - 0.6 * math.exp(-0.3 * layer_index)
    assert lambda_init_for_layer(layer_index) == pytest.approx(expected)
    module = DifferentialAttention(dim=DIM, num_heads=HEADS, layer_index=layer_index)
    assert module.lambda_init == pytest.approx(expected)
    # lambda vectors start small, so lambda starts close to lambda_init
    assert module.differential_lambda().item() == pytest.approx(expected, abs=0.2)


def test_denoiser_layers_get_increasing_lambda_init() -> None:
    denoiser = DifferentialDenoiser(dim=DIM, num_heads=HEADS, num_layers=3)
    inits = [layer.attn.lambda_init for layer in denoiser.layers]
    assert inits == pytest.approx([lambda_init_for_layer(i) for i in range(3)])
    assert inits[0] == pytest.approx(0.2)


def _all_modules() -> list[torch.nn.Module]:
    return [
        DifferentialAttention(dim=DIM, num_heads=HEADS, rotary=True, bias=True),
        TemporalDifferentialAttention(dim=DIM, num_heads=HEADS, rotary=True, bias=True),
        DifferentialTransformerLayer(dim=DIM, num_heads=HEADS, variant="temporal"),
        DifferentialDenoiser(dim=DIM, num_heads=HEADS, num_layers=2),
        SwiGLUFeedForward(dim=DIM, hidden_dim=24),
    ]


@pytest.mark.parametrize("index", range(5))
def test_parameters_finite_and_reset(index: int) -> None:
    module = _all_modules()[index]
    initial = {name: p.detach().clone() for name, p in module.named_parameters()}
    assert initial
    for name, p in initial.items():
        assert torch.isfinite(p).all(), name
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))
    module.reset_parameters()
    for name, p in module.named_parameters():
        assert torch.isfinite(p).all(), f"{name} not re-initialised"
        if p.numel() > 1 and name.endswith(("lambda_q1", "lambda_k2")):
            assert 0 < p.std() < 0.5  # normal(0, 0.1)
        if name.endswith("head_norm.weight"):
            assert torch.equal(p, torch.ones_like(p))
        if name.endswith("lambda_logit"):
            torch.testing.assert_close(torch.sigmoid(p), torch.full_like(p, 0.5))


@pytest.mark.parametrize(
    ("factory", "option"),
    [
        (lambda: DifferentialAttention(dim=12, num_heads=4), "dim"),
        (lambda: DifferentialAttention(dim=DIM, num_heads=0), "num_heads"),
        (lambda: DifferentialAttention(dim=DIM, num_heads=HEADS, dropout=1.0), "dropout"),
        (lambda: DifferentialAttention(dim=DIM, num_heads=HEADS, layer_index=-1), "layer_index"),
        (lambda: DifferentialAttention(dim=12, num_heads=2, rotary=True), "rotary"),
        (lambda: TemporalDifferentialAttention(dim=10, num_heads=4), "dim"),
        (lambda: TemporalDifferentialAttention(dim=DIM, num_heads=HEADS, lambda_init=1.0), "lambda_init"),
        (lambda: TemporalDifferentialAttention(dim=6, num_heads=2, rotary=True), "rotary"),
        (lambda: DifferentialTransformerLayer(dim=DIM, num_heads=HEADS, variant="roll"), "variant"),
        (lambda: DifferentialTransformerLayer(dim=DIM, num_heads=HEADS, ffn_mult=0.0), "ffn_mult"),
        (lambda: DifferentialDenoiser(dim=DIM, num_heads=HEADS, num_layers=0), "num_layers"),
        (lambda: DifferentialDenoiser(dim=DIM, num_heads=HEADS, num_layers=1, variant="x"), "variant"),
        (lambda: SwiGLUFeedForward(dim=DIM, hidden_dim=0), "hidden_dim"),
    ],
)
def test_invalid_options_raise(factory, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        factory()


def test_attention_maps_respect_lambda_sign() -> None:
    """The returned map is A1 - lambda * A2, so its real rows sum to 1 - lambda."""
    module = DifferentialAttention(dim=DIM, num_heads=HEADS).eval()
    x, mask = make_batch([4, 3])
    _, attn = module(x, mask, return_attention=True)
    lam = module.differential_lambda().item()
    sums = attn.sum(-1)[mask[:, None, :].expand(-1, HEADS, -1)]
    torch.testing.assert_close(sums, torch.full_like(sums, 1 - lam))
