"""The CUDA path: the same model gives the CPU's results on a GPU, trains there (float32 and
bf16), and its checkpoint predicts on the CPU. Skipped where no GPU is present (CI has none);
run on a GPU machine with ``python -m pytest tests/test_cuda.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import redifu.nn.kernels.attention as mea
from conftest import TINY_SYNTHETIC, make_tiny_config
from redifu.checkpoint import load_checkpoint
from redifu.config import load_config
from redifu.data.loading import load_corpus
from redifu.model import ReDiFu
from redifu.training.evaluation import predict_split
from redifu.training.loss import redifu_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 matrix products would round to 10 mantissa bits; compare in true float32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _forward_backward(model, batch):
    output = model(batch.features, batch.speakers, batch.mask)
    loss, _ = redifu_loss(output, batch.labels, aux_weight=0.3)
    model.zero_grad(set_to_none=True)
    loss.backward()
    # Copies: moving the model to another device moves the gradient tensors it holds.
    return output.logits.detach().to("cpu", copy=True), {
        n: p.grad.to("cpu", copy=True) for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("denoiser,fusion,graph", [("dual", "text_guided", "modality+cross"), ("temporal", "symmetric", "modality")])
def test_gpu_forward_and_gradients_equal_the_cpu(tiny_batch, denoiser, fusion, graph):
    """No dropout (eval mode, autograd on): logits and every gradient match across devices."""
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(dropout=0.5, denoiser=denoiser, fusion=fusion, graph=graph)).eval()
    logits, grads = _forward_backward(model, tiny_batch)
    gpu_logits, gpu_grads = _forward_backward(model.to(CUDA), tiny_batch.to(CUDA))
    torch.testing.assert_close(gpu_logits, logits, rtol=1e-4, atol=1e-4)
    assert gpu_grads.keys() == grads.keys()
    for name in grads:
        # Summation order differs between devices; gradients that are sums of many cancelling
        # terms differ elementwise by more than rtol, so compare each gradient as a whole.
        error = float((gpu_grads[name] - grads[name]).norm() / grads[name].norm().clamp_min(1e-12))
        assert error < 1e-4, f"{name}: relative error {error:.2e}"


def test_gpu_attention_dropout_is_unbiased():
    """The fused CUDA kernel's dropout: each call differs, the mean over calls is the
    attention without dropout (inverted dropout keeps the expectation)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g).to(CUDA) for _ in range(3))
    mask = torch.ones(1, 6, dtype=torch.bool, device=CUDA)
    mask[0, 4:] = False
    plain = mea.masked_attention(q, k, v, mask)
    draws = torch.stack([mea.masked_attention(q, k, v, mask, dropout_p=0.3) for _ in range(4000)])
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), plain, atol=0.05, rtol=0)


def test_gpu_training_step_with_dropout_runs_in_bf16(tiny_batch):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(dropout=0.5)).to(CUDA).train()
    batch = tiny_batch.to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(batch.features, batch.speakers, batch.mask)
        loss, _ = redifu_loss(output, batch.labels, aux_weight=0.3)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("precision", ["32-true", "bf16"])
def test_train_on_gpu_then_predict_on_cpu(tmp_path, precision):
    """``redifu train`` on the GPU (Lightning's gpu accelerator) writes a checkpoint whose
    predictions on the CPU are the GPU's, and whose recorded metrics the CPU reproduces."""
    from redifu.training.run import train

    tiny = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()]
    config = load_config(None, tiny + ["model.hidden_size=16", "model.num_heads=2", "model.fusion_layers=1",
                                       "model.graph_layers=1", "training.max_epochs=2", "training.batch_size=6",
                                       "training.progress_bar=false", "training.logger=none",
                                       "training.accelerator=gpu", f"training.precision={precision}"])
    metrics = train(config, tmp_path / "run")
    assert metrics["environment"]["device"] == "cuda"
    corpus = load_corpus(config.data)
    on_gpu = predict_split(load_checkpoint(tmp_path / "run" / "checkpoint", map_location=CUDA).model,
                           corpus.splits["test"], device=CUDA)
    on_cpu = predict_split(load_checkpoint(tmp_path / "run" / "checkpoint").model, corpus.splits["test"])
    np.testing.assert_allclose(on_gpu.probabilities, on_cpu.probabilities, atol=1e-4)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["test"]["weighted_f1"] == pytest.approx(metrics["test"]["weighted_f1"])
