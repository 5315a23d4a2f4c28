"""Live conversations: per-utterance latency of ``ConversationSession.add`` along a conversation.

For each setting (default: ``configs/meld-text-live.yaml``, and ``configs/iemocap-text.yaml`` +
``model.causal=true model.recurrent=none``), a randomly initialised model at those settings (384-d precomputed text
vectors, so the text encoder does not dominate) takes one long conversation utterance by
utterance; at each of ``--positions`` (10, 100, 1,000, 10,000) the next ``--repeats`` calls of
``session.add`` are timed (p50 / p99). Beside it, the cost of re-running the whole prefix
(``Predictor.predict`` on the first ``P + 1`` utterances, what a client without sessions pays per
utterance) at ``--prefix-positions`` (10, 100, 1,000), and the bytes a session keeps at each
position (so how many sessions fit in ``--budget-gib``; weights are shared by all sessions).

    python benchmarks/live_latency.py --threads 2 [--json OUT] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from redifu.config import load_config  # noqa: E402
from redifu.model import ReDiFu  # noqa: E402
from redifu.predict import Predictor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "meld-text-live": (REPO / "configs" / "meld-text-live.yaml", [], 7, 9),
    "iemocap-text + causal": (REPO / "configs" / "iemocap-text.yaml", ["model.causal=true", "model.recurrent=none"], 6, 2),
}
TEXT_DIM = 384


def _predictor(config_path: Path, overrides: Sequence[str], classes: int, speakers: int) -> Predictor:
    config = load_config(config_path, overrides).model_config(modality_dims={"text": TEXT_DIM}, num_classes=classes,
                                                              num_speakers=speakers)
    torch.manual_seed(0)
    return Predictor(ReDiFu(config), [f"c{i}" for i in range(classes)], device="cpu")


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(predictor: Predictor, *, positions: Sequence[int], prefix_positions: Sequence[int], repeats: int,
            speakers: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    last = max(positions) + repeats
    vectors = rng.normal(size=(last + 1, TEXT_DIM)).astype(np.float32)
    names = [f"S{int(s)}" for s in rng.integers(0, min(speakers, 4), size=last + 1)]
    session = predictor.session()
    rows, wanted = [], sorted(positions)
    for position in wanted:
        while session.utterances < position:  # walk the conversation up to the position
            t = session.utterances
            session.add(names[t], vectors[t])
        times = []
        for _ in range(repeats):
            t = session.utterances
            start = time.perf_counter()
            session.add(names[t], vectors[t])
            times.append((time.perf_counter() - start) * 1000)
        rows.append({"position": position, "p50_ms": statistics.median(times), "p99_ms": _percentile(times, 99),
                     "session_bytes": session.state_bytes()})
    prefix = []
    for position in prefix_positions:
        dialogue = [{"speaker": names[t], "text": vectors[t]} for t in range(position + 1)]
        predictor.predict(dialogue)  # warm-up
        times = []
        for _ in range(max(3, repeats // 4)):
            start = time.perf_counter()
            predictor.predict(dialogue)
            times.append((time.perf_counter() - start) * 1000)
        prefix.append({"position": position, "prefix_ms": statistics.median(times)})
    return {"rows": rows, "prefix": prefix}


def render(results: dict[str, Any], budget_gib: float) -> str:
    lines = [bc.machine_line(results["machine"]), ""]
    for name, result in results["settings"].items():
        prefix = {r["position"]: r["prefix_ms"] for r in result["prefix"]}
        lines += [f"### {name} ({result['model']})", "",
                  "| position | add p50 (ms) | add p99 (ms) | whole prefix (ms) | prefix / add p50 | session state "
                  f"(KiB) | sessions in {budget_gib:g} GiB |", "|---|---|---|---|---|---|---|"]
        for row in result["rows"]:
            cost = prefix.get(row["position"])
            ratio = f"{cost / row['p50_ms']:.1f}x" if cost else "—"
            fits = int(budget_gib * 2**30 // max(1, row["session_bytes"]))
            lines.append(f"| {row['position']:,} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                         f"{f'{cost:.2f}' if cost else '—'} | {ratio} | {row['session_bytes'] / 1024:.1f} | {fits:,} |")
        first, final = result["rows"][0], result["rows"][-1]
        lines += ["", f"p50 at position {final['position']:,} / at {first['position']:,}: "
                  f"{final['p50_ms'] / first['p50_ms']:.2f}x", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--prefix-positions", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per position (default: 50)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=1.0, help="memory budget for sessions (default: 1)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": bc.machine(), "settings": {}}
    for name in args.settings:
        path, overrides, classes, speakers = SETTINGS[name]
        predictor = _predictor(path, overrides, classes, speakers)
        config = predictor.model.config
        result = measure(predictor, positions=args.positions, prefix_positions=args.prefix_positions,
                         repeats=args.repeats, speakers=speakers)
        result["model"] = (f"hidden {config.hidden_size}, graph {config.graph} window {config.window}, "
                           f"fusion {config.fusion} x{config.fusion_layers}, attention_window {config.attention_window}")
        results["settings"][name] = result
    print(render(results, args.budget_gib))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
