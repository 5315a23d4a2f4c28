"""The results page: tables, paired bootstrap intervals, plots and a plain summary from a grid's cells.

Everything on the page is computed from the cells' ``cell.json`` and ``predictions.npz``; nothing
is typed in by hand. Cells not finished yet show as ``n/a`` and are counted in the header.

Beside the page, ``results-summary.json`` keeps each claim's comparisons (difference, interval,
verdict). A grid whose ``earlier`` names such a file from an earlier version of the page gets
that version's figure beside each comparison, so a rerun says what changed.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from redifu.experiments.corruption import LEVEL_NAMES, Corruption
from redifu.experiments.grid import Grid
from redifu.experiments.runner import load_records
from redifu.experiments.stats import Difference, paired_difference
from redifu.files import write_bytes_atomic, write_json_atomic, write_text_atomic

METRICS = (("test", "weighted_f1"), ("test", "accuracy"), ("test", "macro_f1"), ("dev", "weighted_f1"))
SPEAKER_METRICS = (("test", "weighted_f1"), ("test", "macro_f1"), ("dev", "weighted_f1"))


class Results:
    """Finished cells of a grid, with lookups by (dataset, variant, training corruption)."""

    def __init__(self, grid: Grid, output: Path, earlier: dict | None = None) -> None:
        self.grid = grid
        self.cells, self.records = load_records(grid, output)
        self.earlier = earlier or {}  # an earlier page's summary (results-summary.json)
        self.summary: dict[str, dict] = {}  # this page's, filled while the summary is written
        self.by_group: dict[tuple, list[dict]] = defaultdict(list)
        for cell in self.cells:
            record = self.records.get(cell.key)
            if record is not None:
                self.by_group[(cell.dataset, cell.variant, cell.train_corruption)].append(record)

    def runs(self, dataset: str, variant: str, train: Corruption | None = None) -> list[dict]:
        return self.by_group.get((dataset, variant, train), [])

    def values(self, dataset: str, variant: str, split: str = "test", key: str = "weighted_f1",
               train: Corruption | None = None, evaluation: str = "clean") -> np.ndarray:
        runs = self.runs(dataset, variant, train)
        if evaluation == "clean":
            return np.array([r[split][key] for r in runs])
        return np.array([r["evaluations"][evaluation][key] for r in runs if evaluation in r["evaluations"]])

    def difference(self, dataset: str, variant: str, other: str, *, train: Corruption | None = None,
                   other_train: Corruption | None = None, evaluation: str = "clean") -> Difference | None:
        """Paired bootstrap CI of wF1(variant) - wF1(other) over the seeds both have finished."""
        mine = {r["seed"]: r for r in self.runs(dataset, variant, train)}
        theirs = {r["seed"]: r for r in self.runs(dataset, other, other_train)}
        seeds = sorted(set(mine) & set(theirs))
        seeds = [s for s in seeds if evaluation in mine[s]["predictions"] and evaluation in theirs[s]["predictions"]]
        if not seeds:
            return None
        labels = mine[seeds[0]]["predictions"]["labels"]
        a = np.stack([mine[s]["predictions"][evaluation] for s in seeds])
        b = np.stack([theirs[s]["predictions"][evaluation] for s in seeds])
        return paired_difference(labels, a, b, len(mine[seeds[0]]["classes"]))


def _mean_std(values: np.ndarray) -> str:
    if values.size == 0:
        return "n/a"
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return f"{values.mean():.2f} ± {spread:.2f}"


def _variant_tables(results: Results, blocks: list, metrics: Sequence[tuple[str, str]], *,
                    overrides: bool = False) -> list[str]:
    """One table per dataset of ``blocks``: the baseline and each variant, mean ± std per metric,
    and the paired bootstrap interval of the test weighted-F1 difference to the baseline."""
    grid = results.grid
    headers = [f"{split} {key.replace('_', ' ').replace('f1', 'F1')}" for split, key in metrics]
    if overrides:
        headers.insert(0, "overrides")
    lines = []
    for datasets, variants in blocks:
        for dataset in datasets:
            lines += [f"\n### {grid.datasets[dataset].label}\n",
                      f"| variant | {' | '.join(headers)} | Δ test wF1 vs {grid.baseline} [95% CI] |",
                      "|---|" + "---|" * (len(headers) + 1)]
            for variant in (grid.baseline, *variants):
                cells = [_mean_std(results.values(dataset, variant, split, key)) for split, key in metrics]
                if overrides:
                    cells.insert(0, f"`{', '.join(grid.variants[variant]) or '(defaults)'}`")
                delta = "—" if variant == grid.baseline else _diff_text(
                    results.difference(dataset, variant, grid.baseline))
                lines.append(f"| {variant} | {' | '.join(cells)} | {delta} |")
    return lines


def _real_text_tables(results: Results) -> list[str]:
    """Test weighted F1 per dataset and features (rows) and model (columns), each column's
    difference to the first, then the field's published figures."""
    section = results.grid.real_text
    columns = section["columns"]
    lines = ["", "Test weighted F1 (mean ± std over seeds, dev-selected, test read once); under each column "
             f"after the first, the paired bootstrap 95% CI of its difference to {columns[0]}.", "",
             f"| dataset | text features | {' | '.join(columns)} |", "|---|---|" + "---|" * len(columns)]
    for row in section["rows"]:
        dataset, variants = row["dataset"], row["variants"]
        cells = []
        for index, variant in enumerate(variants):
            if variant == "-":
                cells.append("—")
                continue
            cell = _mean_std(results.values(dataset, variant))
            if index and variants[0] != "-":
                cell += f"<br>{_diff_text(results.difference(dataset, variant, variants[0]))}"
            cells.append(cell)
        lines.append(f"| {results.grid.datasets[dataset].label} | {row['features']} | {' | '.join(cells)} |")
    lines += ["", "Variants (overrides): " + "; ".join(
        f"{column}: `{_column_overrides(results, section['rows'], index)}`" for index, column in enumerate(columns))]
    if section["published"]:
        datasets = list(dict.fromkeys(d for item in section["published"] for d in item["scores"]))
        lines += ["", "Published text-only figures, quoted (not run here): weighted F1 as reported by each paper.", "",
                  f"| method | text encoder | selection | {' | '.join(datasets)} |",
                  "|---|---|---|" + "---|" * len(datasets)]
        for item in section["published"]:
            scores = [str(item["scores"].get(d, "—")) for d in datasets]
            lines.append(f"| {item['method']} | {item['encoder']} | {item['selection']} | {' | '.join(scores)} |")
    if section["note"]:
        lines += ["", section["note"]]
    return lines


def _column_overrides(results: Results, rows: Sequence[Mapping[str, Any]], index: int) -> str:
    """The overrides of one real-text column's variants, each once, in order; a column whose rows
    run different variants (a baseline searched per dataset) names each variant before its own."""
    listed = {variant: ", ".join(results.grid.variants[variant]) or "(the dataset config)"
              for variant in dict.fromkeys(row["variants"][index] for row in rows) if variant in results.grid.variants}
    if len(listed) == 1:
        return next(iter(listed.values()))
    return "; ".join(f"{variant}: {overrides}" for variant, overrides in listed.items()) or "(the dataset config)"


def _diff_text(difference: Difference | None) -> str:
    if difference is None:
        return "n/a"
    mark = {"better": " ▲", "worse": " ▼"}.get(difference.verdict, "")
    return f"{difference}{mark}"


def _level_label(corruption: Corruption) -> str:
    return f"{corruption.level:g} dB" if corruption.kind == "gaussian" else f"{100 * corruption.level:g}%"


def _robustness_part(results: Results, part: str) -> tuple[str, list[str], dict[str, list[Corruption]]]:
    """The robustness dataset, the variants of ``part`` and its corruption levels by kind."""
    section = results.grid.robustness
    variants = section["variants"] if part == "test_time" else section["train_and_test"]["variants"]
    by_kind: dict[str, list[Corruption]] = {}
    for corruption in results.grid.robustness_levels(part):
        by_kind.setdefault(corruption.kind, []).append(corruption)
    return section["dataset"], variants, by_kind


def _series(results: Results, part: str, dataset: str, variant: str, levels: Sequence[Corruption]) -> list[np.ndarray]:
    """Test weighted F1 over seeds: clean, then at each level (test-time, or trained and tested)."""
    if part == "test_time":
        return [results.values(dataset, variant),
                *(results.values(dataset, variant, evaluation=c.name) for c in levels)]
    return [results.values(dataset, variant), *(results.values(dataset, variant, train=c) for c in levels)]


def _robustness_difference(results: Results, part: str, dataset: str, variant: str,
                           corruption: Corruption) -> Difference | None:
    """Baseline minus ``variant`` at ``corruption`` (both evaluated, or both trained, on it)."""
    base = results.grid.baseline
    if part == "test_time":
        return results.difference(dataset, base, variant, evaluation=corruption.name)
    return results.difference(dataset, base, variant, train=corruption, other_train=corruption)


def _robustness_tables(results: Results, part: str) -> list[str]:
    grid = results.grid
    dataset, variants, by_kind = _robustness_part(results, part)
    lines = []
    for kind, kind_levels in by_kind.items():
        lines += [f"\n**{kind}** ({LEVEL_NAMES[kind]}), test weighted F1, mean ± std over seeds:\n",
                  "| variant | clean | " + " | ".join(_level_label(c) for c in kind_levels) + " |",
                  "|---|" + "---|" * (len(kind_levels) + 1)]
        for variant in variants:
            row = [_mean_std(values) for values in _series(results, part, dataset, variant, kind_levels)]
            lines.append(f"| {variant} | {' | '.join(row)} |")
        strongest = kind_levels[-1]
        for variant in variants:
            if variant != grid.baseline:
                difference = _robustness_difference(results, part, dataset, variant, strongest)
                lines.append(f"\n{grid.baseline} − {variant} at {_level_label(strongest)}: {_diff_text(difference)}")
    return lines


def _claim(results: Results, title: str, comparisons: Sequence[tuple[str, str, str, dict]]) -> list[str]:
    """One claim: each comparison is (dataset, a, b, extra kwargs) read as 'a minus b'."""
    lines = [f"\n**{title}**\n"]
    tally = defaultdict(int)
    found = []
    record: dict[str, Any] = {"comparisons": {}}
    before = results.earlier.get("claims", {}).get(title, {})
    note = results.earlier.get("note", "earlier")
    for dataset, a, b, extra in comparisons:
        difference = results.difference(dataset, a, b, **extra)
        if difference is None:
            continue
        tally[difference.verdict] += 1
        found.append(difference)
        where = results.grid.datasets[dataset].label
        condition = extra.get("evaluation", "clean")
        if "train" in extra:
            condition = f"trained and tested with {extra['train'].name}"
        elif condition != "clean":
            condition = f"test features corrupted, {condition}"
        label = f"{a} − {b}, {where} ({condition})"
        record["comparisons"][label] = {"mean": difference.mean, "low": difference.low, "high": difference.high,
                                        "verdict": difference.verdict}
        line = f"- {label}: {difference} → {difference.verdict}"
        old = before.get("comparisons", {}).get(label)
        if old is not None:
            old_difference = Difference(old["mean"], old["low"], old["high"])
            line += f" (before, {note}: {old_difference} → {old_difference.verdict})"
        lines.append(line)
    if found:
        best = max(found, key=lambda d: d.mean)
        worst = min(found, key=lambda d: d.mean)
        record["in_short"] = (f"held (interval above zero) in {tally['better']} of {len(found)} comparisons, "
                              f"reversed in {tally['worse']}, unresolved in {tally['no clear difference']}; "
                              f"differences range from {worst.mean:+.2f} to {best.mean:+.2f} weighted F1.")
        short = f"In short: {record['in_short']}"
        if before.get("in_short"):
            short += f"\n\nBefore ({note}): {before['in_short']}"
        lines.insert(1, short + "\n")
    results.summary[title] = record
    return lines if found else []  # a claim this grid has no cells for is left out


def _strongest(levels: Sequence[Corruption]) -> list[Corruption]:
    """The last (strongest) level listed for each kind."""
    return list({c.kind: c for c in levels}.values())


def _summary(results: Results) -> list[str]:
    grid = results.grid
    base = grid.baseline
    ablated = [d for datasets, _ in grid.ablation for d in datasets]
    has = lambda dataset, variant: bool(results.runs(dataset, variant))  # noqa: E731
    lines = ["Each line is a paired bootstrap 95% interval of the test weighted-F1 difference "
             "(first minus second); ▲/▼ and 'better'/'worse' mean the interval excludes zero."]
    denoiser = [(d, base, "denoiser off", {}) for d in ablated if has(d, "denoiser off")]
    robust = grid.robustness.get("dataset")
    if robust:
        for corruption in _strongest(grid.robustness_levels("test_time")):
            denoiser.append((robust, base, "denoiser off", {"evaluation": corruption.name}))
        for corruption in _strongest(grid.robustness_levels("train_and_test")):
            denoiser.append((robust, base, "denoiser off", {"train": corruption, "other_train": corruption}))
    lines += _claim(results, "Claim 1: the differential denoiser makes noisy audio and video useful "
                    "(full model vs denoiser off)", denoiser)
    graph = [(d, base, "graph off", {}) for d in ablated if has(d, "graph off")]
    graph += [(d, base, v, {}) for datasets, variants in grid.speaker_graph for d in datasets
              for v in variants if v == "speaker-blind"]
    graph += [(row["dataset"], row["variants"][0], "graph off", {}) for row in grid.real_text.get("rows", [])
              if "graph off" in row["variants"][1:] and (row["dataset"], base, "graph off", {}) not in graph]
    lines += _claim(results, "Claim 2: relation subgraphs capture speaker dependencies "
                    "(full model vs graph off, and vs speaker-blind edges)", graph)
    fusion = [(d, base, "fusion symmetric", {}) for d in ablated if has(d, "fusion symmetric")]
    fusion += [(d, base, "fusion concat", {}) for d in ablated if has(d, "fusion concat")]
    if robust:
        for corruption in _strongest(grid.robustness_levels("test_time")):
            fusion += [(robust, base, v, {"evaluation": corruption.name}) for v in ("fusion symmetric", "fusion concat")
                       if v in grid.robustness.get("variants", [])]
    lines += _claim(results, "Claim 3: text-guided diffusion fusion beats symmetric fusion "
                    "(and plain concatenation)", fusion)
    recipe = [(d, base, v, {}) for datasets, variants in grid.ablation for d in datasets
              for v in variants if v.startswith("authors' recipe") and has(d, v)]
    lines += _claim(results, "Our reading vs the authors' recipe (same data, same size, dev selection)", recipe)
    modal = [(d, base, "text only", {}) for d in ablated if has(d, "text only")]
    lines += _claim(results, "Audio and video on top of text (full model vs text only)", modal)
    return lines


def _plot_robustness(results: Results, part: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results.grid
    dataset, variants, by_kind = _robustness_part(results, part)
    if not by_kind:
        return False
    figure, axes = plt.subplots(1, len(by_kind), figsize=(4.6 * len(by_kind), 3.8), squeeze=False)
    for axis, (kind, kind_levels) in zip(axes[0], by_kind.items()):
        labels = ["clean", *(_level_label(c) for c in kind_levels)]
        for variant in variants:
            series = _series(results, part, dataset, variant, kind_levels)
            means = np.array([s.mean() if s.size else np.nan for s in series])
            stds = np.array([s.std(ddof=1) if s.size > 1 else 0.0 for s in series])
            x = np.arange(len(series))
            axis.plot(x, means, marker="o", label=variant)
            axis.fill_between(x, means - stds, means + stds, alpha=0.15)
        axis.set_xticks(np.arange(len(labels)), labels)
        axis.set_title(f"{kind}: {LEVEL_NAMES[kind]}", fontsize=9)
        axis.set_ylabel("test weighted F1")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    when = "test time only" if part == "test_time" else "train and test time"
    figure.suptitle(f"{grid.datasets[dataset].label}: audio and video corrupted at {when} "
                    "(mean ± std over seeds)", fontsize=10)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
    return True


def _plot_speaker(results: Results, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results.grid
    datasets = [d for datasets, _ in grid.speaker_graph for d in datasets]
    if not datasets:
        return False
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.6), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        variants = [grid.baseline, *(v for ds, vs in grid.speaker_graph if dataset in ds for v in vs)]
        groups: dict[bool, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for variant in variants:
            config = results.runs(dataset, variant)
            if not config:
                continue
            model = config[0]["config"]["model"]
            groups[bool(model.get("speaker_aware", True))].append(
                (int(model.get("window", 10)), results.values(dataset, variant)))
        for aware, points in groups.items():
            points.sort(key=lambda p: p[0])
            windows = [p[0] for p in points]
            means = np.array([p[1].mean() for p in points])
            stds = np.array([p[1].std(ddof=1) if p[1].size > 1 else 0.0 for p in points])
            axis.errorbar(windows, means, yerr=stds, marker="o", capsize=3,
                          label="speaker-aware edges" if aware else "speaker-blind edges")
        windows_used = sorted({w for points in groups.values() for w, _ in points})
        axis.set_xscale("log", base=2)
        axis.set_xticks(windows_used, [str(w) for w in windows_used])
        axis.set_xlabel("graph window (utterances each side)")
        axis.set_ylabel("test weighted F1")
        axis.set_title(grid.datasets[dataset].label, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
    return True


def _save(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())


def _provenance(results: Results) -> list[str]:
    lines = ["| dataset | data fingerprints (SHA-256, first 16) | commits | cells | training time (sum over cells) |",
             "|---|---|---|---|---|"]
    per_dataset: dict[str, list[dict]] = defaultdict(list)
    for cell in results.cells:
        if cell.key in results.records:
            per_dataset[cell.dataset].append(results.records[cell.key])
    for dataset, records in per_dataset.items():
        prints = sorted({(r["data_fingerprint"] or "?")[:16] for r in records if not r["train_corruption"]})
        commits = sorted({(r["commit"] or "unknown")[:10] for r in records})
        seconds = sum(r.get("train_seconds") or 0.0 for r in records)
        lines.append(f"| {dataset} | {', '.join(prints)} | {', '.join(commits)} | {len(records)} | "
                     f"{seconds / 60:.0f} min |")
    return lines


def write_results(grid: Grid, output: Path, directory: Path, *, command: str, machine: str) -> list[Path]:
    """Write ``directory/RESULTS.md`` and its plots from the finished cells under ``output``."""
    earlier = {}
    if grid.earlier:
        earlier_path = Path(grid.earlier["summary"])
        if not earlier_path.is_file():
            raise FileNotFoundError(f"{earlier_path}: the grid's earlier summary is missing")
        earlier = dict(json.loads(earlier_path.read_text()), note=grid.earlier["note"])
    results = Results(grid, output, earlier)
    directory.mkdir(parents=True, exist_ok=True)
    finished, total = len(results.records), len(results.cells)
    written = []
    plots = {}
    if grid.robustness:
        for part, name in (("test_time", "robustness_test-time.png"), ("train_and_test", "robustness_train-and-test.png")):
            if _plot_robustness(results, part, directory / name):
                plots[part] = name
                written.append(directory / name)
    if grid.speaker_graph and _plot_speaker(results, directory / "speaker_graph.png"):
        plots["speaker"] = "speaker_graph.png"
        written.append(directory / "speaker_graph.png")
    seconds = sum(r.get("train_seconds") or 0.0 for r in results.records.values())
    lines = [
        "# Results",
        "",
        f"Generated by `{command} --write {directory}` from {finished} of {total} cells of "
        f"`{grid.source}` ({machine}; {seconds / 3600:.1f} h of training summed over cells, which run "
        "in parallel). Do not edit by hand: rerun the command.",
        "",
        "Protocol: every cell is one training run with its own seed (seeds "
        f"{', '.join(map(str, grid.seeds))}), its checkpoint selected on the dev split's weighted F1 "
        "and the test split read once at that checkpoint. Tables give mean ± standard deviation "
        "over seeds. Δ columns are paired bootstrap 95% confidence intervals (percentile, 2,000 "
        "resamples of test utterances, `scipy.stats.bootstrap` with `paired=True`) of the "
        "seed-averaged weighted-F1 difference against the default model; ▲/▼ mark intervals that "
        "exclude zero. The interval covers the test set's sampling noise for these trained models, "
        "not the spread between seeds (given beside it).",
        "",
        "## Summary",
        *_summary(results),
        "",
    ]
    if grid.ablation:
        lines += ["## 1. Ablations", *_variant_tables(results, grid.ablation, METRICS)]
    if grid.robustness:
        dataset = grid.datasets[grid.robustness["dataset"]].label
        lines += ["", "## 2. Robustness to corrupted audio and video", "",
                  f"On the {dataset}. Corruptions (`redifu/experiments/corruption.py`) use the clean "
                  "training split's per-dimension mean and standard deviation: Gaussian noise at a "
                  "signal-to-noise ratio; a share of utterances whose vector is replaced by a loud "
                  "noise burst (mean + 3 std × N(0,1)); a share of utterances with the modality "
                  "missing (set to the training mean). The same corrupted test utterances are used "
                  "for every variant and seed.", "", "### Test-time corruption (models trained on clean data)"]
        if "test_time" in plots:
            lines += ["", f"![test-time robustness]({plots['test_time']})"]
        lines += _robustness_tables(results, "test_time")
        lines += ["", "### Corruption at training and test time (one model per strength)"]
        if "train_and_test" in plots:
            lines += ["", f"![train and test robustness]({plots['train_and_test']})"]
        lines += _robustness_tables(results, "train_and_test")
    if grid.speaker_graph:
        lines += ["", "## 3. Speaker graph: window and relation types", ""]
        if "speaker" in plots:
            lines += [f"![speaker graph]({plots['speaker']})", ""]
        lines += ["Speaker-blind edges join the same utterances but with one relation for "
                  "'any speaker' instead of same-speaker and other-speaker relations."]
        lines += _variant_tables(results, grid.speaker_graph, SPEAKER_METRICS, overrides=True)
    if grid.real_text:
        lines += ["", "## 4. Real text: frozen and fine-tuned features, ReDiFu against baselines"]
        lines += _real_text_tables(results)
    lines += ["", "## Provenance", "",
              "Each cell's directory (`<output>/<dataset>/<variant>/[train-<corruption>/]seed-<n>/`) "
              "holds its resolved config, `cell.json` (overrides, seed, commit, data fingerprint, "
              "metrics) and `predictions.npz` (per-utterance test predictions). A dataset shows several "
              "fingerprints when some variants read fewer modalities (the fingerprint is of the data "
              "a run sees), and several commits when cells were trained at different commits of the "
              "same model code (finished cells are reused, never rerun).", "",
              *_provenance(results), ""]
    page = directory / "RESULTS.md"
    write_text_atomic(page, re.sub(r"\n{3,}", "\n\n", "\n".join(lines)))
    summary = directory / "results-summary.json"
    write_json_atomic(summary, {"source": f"{command} --write {directory}", "cells": finished,
                                "claims": results.summary})
    return [page, summary, *written]
