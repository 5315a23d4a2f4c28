"""Live conversations over `redifu serve`'s `/live` WebSocket: round trip per utterance under N
concurrent sessions, on loopback, bounded.

A server is started (an untrained causal model at the ``configs/meld-text-live.yaml`` settings,
384-d text vectors in the messages so that the text encoder does not dominate); for each N in
``--sessions``, N clients each open a session and send ``--utterances`` utterances one after the
other, each waiting for its emotion (the round trip). Reports p50 / p99 round trip, utterances/s
over all sessions, errors (replies with ``detail`` or failed connections; must be 0) and the
server's resident memory before and after each N.

    python benchmarks/live_ws.py [--sessions 1 8 32] [--utterances 50] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
from serve_load import MELD_CLASSES, percentile, rss_mb, start_server, stop_server  # noqa: E402

TEXT_DIM = 384


def build_causal_checkpoint(directory: Path) -> Path:
    """An untrained model at the causal MELD text settings, saved as a checkpoint."""
    import torch

    from redifu.checkpoint import save_checkpoint
    from redifu.config import load_config
    from redifu.model import ReDiFu

    config = load_config("meld-text-live").model_config(modality_dims={"text": TEXT_DIM},
                                                        num_classes=len(MELD_CLASSES), num_speakers=9)
    torch.manual_seed(0)
    return save_checkpoint(directory, ReDiFu(config), MELD_CLASSES)


async def one_session(url: str, utterances: int, seed: int, timeout: float) -> tuple[list[float], int, str | None]:
    """Round trips (ms) of one session's utterances, its error count and first error."""
    import websockets

    rng = np.random.default_rng(seed)
    times, errors, first = [], 0, None
    try:
        async with websockets.connect(url.replace("http://", "ws://") + "/live", open_timeout=timeout) as socket:
            for index in range(utterances):
                message = json.dumps({"speaker": f"S{index % 3}", "text": rng.normal(size=TEXT_DIM).round(4).tolist()})
                started = time.perf_counter()
                await socket.send(message)
                answer = json.loads(await asyncio.wait_for(socket.recv(), timeout))
                times.append(1000 * (time.perf_counter() - started))
                if "label" not in answer:
                    errors += 1
                    first = first or str(answer.get("detail"))
    except Exception as error:  # noqa: BLE001  (a failed connection counts as one error)
        errors += 1
        first = first or f"{type(error).__name__}: {error}"
    return times, errors, first


async def concurrent(url: str, sessions: int, utterances: int, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_session(url, utterances, seed, timeout) for seed in range(sessions)))
    seconds = time.perf_counter() - started
    times = [t for r in results for t in r[0]]
    return {"sessions": sessions, "utterances": len(times), "utterances_per_s": len(times) / seconds,
            "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "errors": sum(r[1] for r in results), "first_error": next((r[2] for r in results if r[2]), None)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": {**bc.machine(), "threads": args.threads}, "rows": [],
                              "utterances_per_session": args.utterances}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_causal_checkpoint(Path(tmp) / "ckpt")
        process, url = start_server(checkpoint, max_batch=8, wait_ms=5, threads=args.threads, cache=Path(tmp) / "cache")
        try:
            for sessions in args.sessions:
                before = rss_mb(process.pid)
                row = asyncio.run(concurrent(url, sessions, args.utterances, args.timeout))
                row.update(rss_before_mb=before, rss_after_mb=rss_mb(process.pid))
                result["rows"].append(row)
                print(f"[live_ws] {sessions} sessions: {row['utterances']} utterances, {row['errors']} errors",
                      file=sys.stderr, flush=True)
        finally:
            stop_server(process)
    result["load_end"] = os.getloadavg()[0]
    return result


def render(result: dict[str, Any], command: str = "python benchmarks/live_ws.py") -> str:
    lines = [f"{bc.machine_line(result['machine'])}, {result['machine']['threads']} server threads; "
             f"load average {result['load_end']:.1f} at the end",
             f"model: untrained, configs/meld-text-live.yaml settings; {result['utterances_per_session']} utterances "
             "per session, each sent when the last one's emotion came back; loopback WebSocket",
             f"command: {command}", "",
             bc.table(["sessions at once", "utterances", "utterances/s", "round trip p50 ms", "p99 ms", "errors",
                       "server RSS before / after (MB)"],
                      [[r["sessions"], r["utterances"], r["utterances_per_s"], r["p50_ms"], r["p99_ms"], r["errors"],
                        f"{r['rss_before_mb']:.0f} / {r['rss_after_mb']:.0f}"] for r in result["rows"]])]
    problems = [f"{r['sessions']} sessions: {r['errors']} errors, first: {r['first_error']}"
                for r in result["rows"] if r["errors"]]
    return "\n".join(lines + (["", "ERRORS:", *problems] if problems else []))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32], help="concurrent sessions (each N)")
    parser.add_argument("--utterances", type=int, default=50, help="utterances per session (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="server torch threads (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a reply counts as an error")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    result = run(args)
    print(render(result, "python benchmarks/live_ws.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
