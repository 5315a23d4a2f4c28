"""Where a training step's time goes, per component: data, encoders, denoiser, graph, fusion,
classifiers, loss, backward per component, optimiser.

Runs ``--steps`` training steps (after one warm-up step) under :mod:`torch.profiler`. Forward
time per component comes from the ``record_function`` labels the model sets
(``redifu.encoders``, ``redifu.denoiser``, ``redifu.graph``, ``redifu.fusion``,
``redifu.classifiers``) and those this script sets around batching (``redifu.data``), the loss,
the backward pass and the optimiser step. Autograd runs backward outside those labels, so the
backward pass is split by component with gradient hooks on each component's inputs and outputs
(a component's backward runs from the first gradient reaching its outputs to the last gradient
leaving its inputs). Also lists the most expensive operators.

    python benchmarks/profile_components.py --config configs/iemocap.yaml --steps 3
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from redifu.data.batching import DialogueDataset, collate_dialogues  # noqa: E402
from redifu.training.loss import redifu_loss  # noqa: E402
from redifu.training.system import parameter_groups  # noqa: E402

FORWARD = ("redifu.data", "redifu.encoders", "redifu.denoiser", "redifu.graph", "redifu.fusion",
           "redifu.classifiers", "redifu.loss", "redifu.backward", "redifu.optimizer")


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in _tensors(getattr(value, name))]
    return []


class BackwardClock:
    """Records when gradients reach each component's outputs and leave its inputs."""

    def __init__(self, components: dict[str, list[torch.nn.Module]]) -> None:
        self.times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for name, modules in components.items():
            for module in modules:
                module.register_forward_pre_hook(self._hook(name, "in"), with_kwargs=True)
                module.register_forward_hook(self._output_hook(name))

    def _stamp(self, name: str, side: str):
        def record(grad):
            self.times[name, side].append(time.perf_counter())
        return record

    def _hook(self, name: str, side: str):
        def hook(module, args, kwargs):
            if torch.is_grad_enabled():
                for tensor in _tensors(args) + _tensors(kwargs):
                    tensor.register_hook(self._stamp(name, side))
        return hook

    def _output_hook(self, name: str):
        def hook(module, args, output):
            if torch.is_grad_enabled():
                for tensor in _tensors(output):
                    tensor.register_hook(self._stamp(name, "out"))
        return hook

    def split(self, start: float, end: float, names: Sequence[str]) -> dict[str, float]:
        """Seconds of backward per component, in backward order, plus the rest before/after."""
        spans = {}
        for name in names:
            if self.times[name, "out"] and self.times[name, "in"]:
                spans[name] = max(0.0, max(self.times[name, "in"]) - min(self.times[name, "out"]))
        first = min((min(self.times[n, "out"]) for n in names if self.times[n, "out"]), default=start)
        last = max((max(self.times[n, "in"]) for n in names if self.times[n, "in"]), default=end)
        spans["loss + classifiers"] = max(0.0, first - start)
        spans["encoders"] = max(0.0, end - last)
        self.times.clear()
        return spans


def measure_profile(
    config_path: str | None = "configs/iemocap.yaml",
    overrides: Sequence[str] = (),
    *,
    steps: int = 3,
    top: int = 12,
    device: str = "auto",
) -> dict[str, Any]:
    torch_device = bc.pick_device(device)
    setup = bc.build(config_path, overrides, device=torch_device)
    model = setup.model.train()
    training = setup.config.training
    optimizer = torch.optim.AdamW(parameter_groups(model, training.weight_decay), lr=training.lr)
    dataset = DialogueDataset(setup.corpus.splits["train"], setup.model_config.modalities)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    components = {"fusion": [model.fusion], "graph": [model.graph] if model.graph is not None else [],
                  "denoiser": list(model.denoisers.values())}
    clock = BackwardClock(components)
    backward: dict[str, float] = collections.Counter()

    def step(index: int, record: bool) -> None:
        with record_function("redifu.data"):
            picks = order[(index * training.batch_size) % len(order):][:training.batch_size]
            batch = collate_dialogues([dataset[i] for i in picks]).to(torch_device)
        output = model(batch.features, batch.speakers, batch.mask)
        with record_function("redifu.loss"):
            loss, _ = redifu_loss(output, batch.labels, aux_weight=training.aux_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        with record_function("redifu.backward"):
            start = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
        spans = clock.split(start, end, list(components))
        if record:
            backward.update(spans)
        with record_function("redifu.optimizer"):
            if training.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
            optimizer.step()
        bc.synchronize(torch_device)

    step(0, record=False)  # warm-up
    started = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch_device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for index in range(1, steps + 1):
            step(index, record=True)
    wall = time.perf_counter() - started
    averages = profiler.key_averages()
    events = {e.key: e for e in averages}
    # On a GPU the host returns before the kernels finish: time what the kernels took. Host
    # clocks around backward() say nothing per component there, so the backward split is CPU-only.
    gpu = torch_device.type == "cuda"
    total, own = ("device_time_total", "self_device_time_total") if gpu else ("cpu_time_total", "self_cpu_time_total")
    labels = {name: getattr(events[name], total) / 1e6 / steps for name in FORWARD if name in events}
    operators = sorted((e for e in averages if not e.key.startswith("redifu.")),
                       key=lambda e: getattr(e, own), reverse=True)[:top]
    result = {
        "config": config_path or "defaults", "overrides": list(overrides), "machine": bc.machine(),
        "settings": bc.settings_line(setup), "steps": steps, "step_seconds": wall / steps,
        "clock": "GPU kernel time" if gpu else "CPU time",
        "labels": labels, "backward": {} if gpu else {k: v / steps for k, v in backward.items()},
        "operators": [{"name": e.key, "self_seconds": getattr(e, own) / 1e6 / steps, "calls": e.count // steps}
                      for e in operators],
    }
    if gpu:
        result["kernel_seconds"] = sum(getattr(e, own) for e in averages if not e.key.startswith("redifu.")) / 1e6 / steps
    return result


def report(result: dict[str, Any]) -> str:
    labels, backward = result["labels"], result["backward"]
    step = result["step_seconds"]
    rows = []
    for name in ("redifu.data", "redifu.encoders", "redifu.denoiser", "redifu.graph", "redifu.fusion",
                 "redifu.classifiers", "redifu.loss"):
        if name in labels:
            rows.append([f"forward: {name.split('.')[1]}", labels[name], f"{100 * labels[name] / step:.1f}%"])
    for name in ("loss + classifiers", "fusion", "graph", "denoiser", "encoders"):
        if name in backward:
            rows.append([f"backward: {name}", backward[name], f"{100 * backward[name] / step:.1f}%"])
    if "redifu.optimizer" in labels:
        rows.append(["optimiser (clip + AdamW)", labels["redifu.optimizer"],
                     f"{100 * labels['redifu.optimizer'] / step:.1f}%"])
    if "kernel_seconds" in result:
        rest = result["kernel_seconds"] - sum(labels.get(name, 0.0) for name in FORWARD if name != "redifu.backward")
        rows.append(["backward (the remaining kernel time)", rest, f"{100 * rest / step:.1f}%"])
        rows.append(["all GPU kernels", result["kernel_seconds"], f"{100 * result['kernel_seconds'] / step:.1f}%"])
    rows.append(["whole step (profiled, wall clock)", step, "100%"])
    rows = [[r[0], round(r[1], 3), r[2]] for r in rows]
    return "\n".join([
        "- " + bc.machine_line(result["machine"]),
        f"- config: {result['config']} {' '.join(result['overrides'])}".rstrip(), "- " + result["settings"], "",
        f"Per training step, {result.get('clock', 'CPU time')} (mean of {result['steps']} profiled steps; the "
        "profiler adds some overhead):", "",
        bc.table(["component", "s / step", "share"], rows), "",
        f"Most expensive operators (self {result.get('clock', 'CPU time')}):", "",
        bc.table(["operator", "self s / step", "calls / step"],
                 [[o["name"], round(o["self_seconds"], 3), o["calls"]] for o in result["operators"]]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/iemocap.yaml")
    parser.add_argument("--steps", type=int, default=3)
    bc.add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure_profile(args.config, args.overrides, steps=args.steps, device=args.device)
    return bc.finish(args, result, report(result))


if __name__ == "__main__":
    sys.exit(main())
