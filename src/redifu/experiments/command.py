"""``redifu experiment``: run a grid file's cells and write the results page."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

EPILOG = """\
examples:
  redifu experiment --grid grids/results.yaml --jobs 2 --write docs      # the whole grid (resumable)
  redifu experiment --grid grids/results.yaml --quick --output runs/quick  # pipeline check, about a minute
  redifu experiment --grid grids/results.yaml --report-only --write docs   # page from the cells finished so far
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="grid file (YAML), e.g. grids/results.yaml")
    parser.add_argument("--output", default=None, help="where the cell run directories go "
                        "(default runs/experiments, or runs/experiments-quick with --quick)")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once (threads are split among them)")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny data, 2 epochs: checks the pipeline")
    parser.add_argument("--write", metavar="DIR", help="write RESULTS.md and the plots into DIR")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the finished cells")


def run(args: argparse.Namespace) -> int:
    from redifu.experiments.grid import load_grid
    from redifu.experiments.runner import run_grid

    grid = load_grid(args.grid)
    if args.quick:
        skipped = [s for s in grid.datasets.values() if s.path and not Path(s.path).exists()]
        grid = grid.quick()
        for spec in skipped:
            print(f"skipping {spec.name}: {spec.path} not prepared ({spec.prepare or 'no prepare command'})")
    output = Path(args.output or ("runs/experiments-quick" if args.quick else "runs/experiments"))
    started = time.perf_counter()
    if not args.report_only:
        run_grid(grid, output, jobs=args.jobs, quick=args.quick)
    if args.write:
        from redifu.experiments.results_page import write_results

        command = f"redifu experiment --grid {args.grid}" + (" --quick" if args.quick else "")
        written = write_results(grid, output, Path(args.write), command=command,
                                machine=f"{platform.machine()}, {os.cpu_count()} cores")
        print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
