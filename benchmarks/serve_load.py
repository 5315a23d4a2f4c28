"""Load on `redifu serve`: concurrent clients on loopback, with and without micro-batching.

For each server setting (``--batching MAX_BATCH:WAIT_MS ...``; default ``1:0``, every request
alone, and ``8:5``) the script starts ``redifu serve`` on a free loopback port, then for each
request size (``--sizes``: utterances per request) runs ``--clients`` concurrent clients
(asyncio + httpx, one connection each, a new request as soon as the last one is answered) for
``--seconds`` after a short warm-up. Reported per setting and size: requests, requests/s,
utterances/s, latency p50 and p99, and errors (any answer but 200; must be 0); per setting, the
server's resident memory after startup and at the end. Bounded: every request has a timeout and
the whole run is (settings x sizes x (seconds + warm-up)).

Requests carry precomputed text vectors by default (the server's HTTP, batching and model, no
text encoder); ``--transcripts`` sends new sentences instead, which the server encodes with the
checkpoint's text encoder (every request unseen, so the encoder's cache never answers). Without
``--checkpoint`` a model of the MELD text settings (configs/meld-text.yaml: 384-d text, 7
emotions, 9 speakers) is built untrained: speed does not depend on the weights. ``--url``
measures a server already running instead (its memory with ``--server-pid``).

    python benchmarks/serve_load.py                                    # about 2 minutes
    python benchmarks/serve_load.py --checkpoint runs/meld-text/checkpoint --transcripts
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --server-pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

MELD_CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
SPEAKERS = ("Ross", "Rachel", "Monica", "Chandler")


def build_checkpoint(directory: Path) -> Path:
    """An untrained model at the MELD text settings, saved as a checkpoint."""
    import torch

    from redifu.checkpoint import save_checkpoint
    from redifu.config import load_config
    from redifu.model import ReDiFu

    config = load_config("meld-text").model_config(modality_dims={"text": 384}, num_classes=len(MELD_CLASSES),
                                                   num_speakers=9)
    torch.manual_seed(0)
    return save_checkpoint(directory, ReDiFu(config), MELD_CLASSES)


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Bodies:
    """Request bodies of one size: a few precomputed-vector bodies in turn, or new sentences."""

    def __init__(self, size: int, *, transcripts: bool, text_dim: int, seed: int = 0) -> None:
        self.size, self.transcripts, self.count = size, transcripts, 0
        rng = np.random.default_rng(seed)
        self._fixed = [] if transcripts else [json.dumps({"dialogue_id": f"v{k}", "utterances": [
            {"speaker": SPEAKERS[i % len(SPEAKERS)], "text": rng.normal(size=text_dim).round(4).tolist()}
            for i in range(size)]}).encode() for k in range(8)]

    def next(self) -> bytes:
        self.count += 1
        if not self.transcripts:
            return self._fixed[self.count % len(self._fixed)]
        n = self.count
        return json.dumps({"dialogue_id": f"t{n}", "utterances": [
            {"speaker": SPEAKERS[i % len(SPEAKERS)],
             "text": f"Request {n}, line {i}: I can't believe you did that again, {SPEAKERS[(i + 1) % 4]}!"}
            for i in range(self.size)]}).encode()


@dataclass
class Measured:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    first_error: str | None


async def load(url: str, bodies: Bodies, *, clients: int, seconds: float, timeout: float) -> Measured:
    import httpx

    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    deadline = time.perf_counter() + seconds

    async def client(http: "httpx.AsyncClient") -> None:
        nonlocal errors, first_error
        while time.perf_counter() < deadline:
            body = bodies.next()
            started = time.perf_counter()
            try:
                response = await http.post(f"{url}/predict", content=body,
                                           headers={"content-type": "application/json"})
                ok = response.status_code == 200
                problem = None if ok else f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                ok, problem = False, f"{type(error).__name__}: {error}"
            if ok:
                latencies.append(1000 * (time.perf_counter() - started))
            else:
                errors += 1
                first_error = first_error or problem

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return Measured(len(latencies), errors, time.perf_counter() - started, latencies, first_error)


def start_server(checkpoint: Path, *, max_batch: int, wait_ms: float, threads: int,
                 cache: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "redifu", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms), "--threads", str(threads),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"redifu serve did not start: {process.communicate()[1][-1500:]}")
        time.sleep(0.3)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from redifu.checkpoint import load_checkpoint

    settings = [(int(b), float(w)) for b, w in (s.split(":") for s in args.batching)] if not args.url else [None]
    result: dict[str, Any] = {
        "machine": {**bc.machine(), "threads": args.threads}, "load_start": os.getloadavg()[0],
        "clients": args.clients, "seconds": args.seconds, "sizes": list(args.sizes),
        "payload": "transcripts" if args.transcripts else "text vectors", "rows": [], "servers": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is None and not args.url:
            checkpoint = build_checkpoint(Path(tmp) / "meld-text-untrained")
        text_dim = 384
        if checkpoint is not None:
            text_dim = json.loads((checkpoint / "config.json").read_text())["modality_dims"]["text"]
            result["model"] = str(args.checkpoint or "untrained, configs/meld-text.yaml settings")
            result["parameters"] = load_checkpoint(checkpoint).model.num_parameters()
        else:
            result["model"] = args.url
        for setting in settings:
            process = None
            if setting is None:
                url, pid, label = args.url.rstrip("/"), args.server_pid, "the server at --url"
            else:
                max_batch, wait_ms = setting
                process, url = start_server(checkpoint, max_batch=max_batch, wait_ms=wait_ms, threads=args.threads,
                                            cache=Path(tmp) / "cache")
                pid = process.pid
                label = "off (max-batch 1)" if max_batch == 1 else f"max-batch {max_batch}, wait {wait_ms:g} ms"
            server = {"batching": label, "rss_start_mb": rss_mb(pid)}
            try:
                for size in [size for _ in range(args.rounds) for size in args.sizes]:
                    bodies = Bodies(size, transcripts=args.transcripts, text_dim=text_dim, seed=size)
                    asyncio.run(load(url, bodies, clients=args.clients, seconds=args.warmup, timeout=args.timeout))
                    measured = asyncio.run(load(url, bodies, clients=args.clients, seconds=args.seconds,
                                                timeout=args.timeout))
                    result["rows"].append({
                        "batching": label, "utterances": size, "requests": measured.requests,
                        "requests_per_s": measured.requests / measured.seconds,
                        "utterances_per_s": measured.requests * size / measured.seconds,
                        "p50_ms": percentile(measured.latencies_ms, 50),
                        "p99_ms": percentile(measured.latencies_ms, 99),
                        "errors": measured.errors, "first_error": measured.first_error,
                        "rss_mb": rss_mb(pid),
                    })
                    print(f"[serve_load] {label}, {size} utterances: {measured.requests} requests, "
                          f"{measured.errors} errors", file=sys.stderr, flush=True)
                server["rss_end_mb"] = rss_mb(pid)
            finally:
                if process is not None:
                    stop_server(process)
            result["servers"].append(server)
    result["load_end"] = os.getloadavg()[0]
    return result


def render(result: dict[str, Any], command: str = "python benchmarks/serve_load.py") -> str:
    machine = result["machine"]
    lines = [
        f"machine: {machine['arch']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} server threads, device {machine['device']}; load average {result['load_start']:.1f} "
        f"at the start, {result['load_end']:.1f} at the end",
        f"model: {result['model']}" + (f", {result['parameters']:,} parameters" if "parameters" in result else ""),
        f"settings: {result['clients']} concurrent clients, {result['seconds']:g} s per size after a warm-up, "
        f"payload {result['payload']}, loopback",
        f"command: {command}",
        "",
        bc.table(["batching", "utterances / request", "requests", "requests/s", "utterances/s", "p50 ms", "p99 ms",
                  "errors", "server RSS after (MB)"],
                 [[r["batching"], r["utterances"], r["requests"], r["requests_per_s"], r["utterances_per_s"],
                   r["p50_ms"], r["p99_ms"], r["errors"], r.get("rss_mb")] for r in result["rows"]]),
        "",
        bc.table(["batching", "server RSS at start (MB)", "server RSS at end (MB)"],
                 [[s["batching"], s["rss_start_mb"], s.get("rss_end_mb")] for s in result["servers"]]),
    ]
    problems = [f"{r['batching']}, {r['utterances']} utterances: {r['errors']} errors, first: {r['first_error']}"
                for r in result["rows"] if r["errors"]]
    if problems:
        lines += ["", "ERRORS:", *problems]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: an untrained MELD-text-sized model)")
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process id, for its memory")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per request size (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 80], help="utterances per request")
    parser.add_argument("--batching", nargs="+", default=["1:0", "8:5"], metavar="MAX_BATCH:WAIT_MS",
                        help="server settings to compare (default: 1:0 = no batching, 8:5)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the request sizes this many times over (memory after each: flat or growing)")
    parser.add_argument("--transcripts", action="store_true", help="send new sentences (the server encodes them)")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's torch threads (default 1: on 2 cores the clients and the server's own "
                        "HTTP work need the other; more threads there made requests up to 10x slower)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as an error")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if args.url and args.checkpoint:
        parser.error("give --checkpoint or --url, not both")
    if args.clients < 1 or args.seconds <= 0 or min(args.sizes) < 1:
        parser.error("--clients, --seconds and --sizes must be positive")
    result = run(args)
    text = render(result, command="python benchmarks/serve_load.py " + " ".join(argv if argv is not None else
                                                                              sys.argv[1:]))
    print(text)
    if args.json:
        bc.write_json_atomic(args.json, result)
    return 1 if any(r["errors"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
