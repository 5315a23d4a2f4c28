"""Experiment grids: datasets x variants x seeds, read from a YAML file and planned into cells.

A grid file (see ``grids/results.yaml``) names its datasets (a config file, an optional data
path), its variants (lists of ``key=value`` overrides), the seeds, overrides for every cell, and
three sections: ``ablation`` and ``speaker_graph`` (lists of ``{datasets, variants}``) and
``robustness`` (one dataset; variants evaluated on corrupted test features, and variants
trained *and* tested on corrupted features). An optional ``earlier`` (``{summary: FILE, note:
TEXT}``) names the summary of an earlier version of the page, which the page then shows beside
each comparison. An optional ``real_text`` section compares text features (frozen and fine-tuned
encoders) across models: ``columns`` (labels), ``rows`` (each a dataset, a features label and
one variant per column) and ``published`` (quoted figures of the field, shown beside them, never
run). A cell is one training run: (dataset, variant,
training corruption, seed). Cells that several sections need are planned once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from redifu.config import _yaml_load
from redifu.experiments.corruption import KINDS, Corruption
from redifu.errors import ConfigError

SECTIONS = ("ablation", "speaker_graph", "robustness")
QUICK_SYNTHETIC = ("data.synthetic.train_dialogues=12", "data.synthetic.dev_dialogues=4",
                   "data.synthetic.test_dialogues=4")
QUICK_TRAINING = ("training.max_epochs=2", "model.hidden_size=16", "model.num_heads=2")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the grid: a config file, and a data path (``None``: synthetic from the config)."""

    name: str
    config: str | None
    path: str | None = None
    title: str = ""
    prepare: str | None = None  # the command that makes ``path``, shown when it is missing

    @property
    def label(self) -> str:
        return self.title or self.name


@dataclass(frozen=True)
class Cell:
    """One training run of the grid, plus the corrupted test sets its model is evaluated on."""

    dataset: str
    variant: str
    seed: int
    train_corruption: Corruption | None = None
    test_corruptions: tuple[Corruption, ...] = ()

    @property
    def key(self) -> tuple:
        return (self.dataset, self.variant, self.train_corruption, self.seed)

    @property
    def directory(self) -> Path:
        path = Path(self.dataset) / slug(self.variant)
        if self.train_corruption is not None:
            path = path / f"train-{self.train_corruption.name}"
        return path / f"seed-{self.seed}"


@dataclass
class Grid:
    """A parsed grid file."""

    datasets: dict[str, DatasetSpec]
    variants: dict[str, tuple[str, ...]]
    seeds: tuple[int, ...]
    baseline: str
    overrides: tuple[str, ...] = ()
    ablation: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    speaker_graph: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    robustness: dict[str, Any] = field(default_factory=dict)
    corruption_seed: int = 1234
    source: str = "<memory>"
    earlier: dict[str, str] = field(default_factory=dict)
    real_text: dict[str, Any] = field(default_factory=dict)

    def quick(self) -> "Grid":
        """One seed, tiny synthetic presets, two epochs of a tiny model: checks the pipeline only."""
        datasets = {name: spec for name, spec in self.datasets.items()
                    if spec.path is None or Path(spec.path).exists()}

        def kept(blocks: list) -> list:
            return [(tuple(d for d in ds if d in datasets), vs) for ds, vs in blocks if any(d in datasets for d in ds)]

        robustness = self.robustness if self.robustness.get("dataset") in datasets else {}
        return Grid(
            datasets=datasets, variants=self.variants, seeds=self.seeds[:1], baseline=self.baseline,
            overrides=(*self.overrides, *QUICK_TRAINING), ablation=kept(self.ablation),
            speaker_graph=kept(self.speaker_graph), robustness=robustness,
            corruption_seed=self.corruption_seed, source=self.source + " (quick)",
            real_text=dict(self.real_text, rows=[r for r in self.real_text["rows"] if r["dataset"] in datasets])
            if self.real_text else {},
        )

    def cell_overrides(self, cell: Cell, *, quick: bool = False) -> list[str]:
        spec = self.datasets[cell.dataset]
        data = [f"data.path={spec.path}"] if spec.path else []
        tiny = list(QUICK_SYNTHETIC) if quick and spec.path is None else []
        return [*data, *tiny, *self.overrides, *self.variants[cell.variant], f"training.seed={cell.seed}"]

    def robustness_levels(self, part: str) -> list[Corruption]:
        levels = self.robustness.get(part, {})
        return [Corruption(kind, float(level)) for kind in KINDS for level in levels.get(kind, [])]

    def plan(self) -> list[Cell]:
        """All cells, each once, clean runs first (train+test corruption runs last)."""
        cells: dict[tuple, Cell] = {}

        def add(dataset: str, variant: str, seed: int, train: Corruption | None = None,
                tests: tuple[Corruption, ...] = ()) -> None:
            if dataset not in self.datasets:
                return  # dropped (e.g. quick mode without the prepared data)
            cell = Cell(dataset, variant, seed, train)
            old = cells.get(cell.key, cell)
            merged = tuple(dict.fromkeys((*old.test_corruptions, *tests)))
            cells[cell.key] = Cell(dataset, variant, seed, train, merged)

        for datasets, variants in [*self.ablation, *self.speaker_graph]:
            for dataset in datasets:
                for variant in dict.fromkeys((self.baseline, *variants)):
                    for seed in self.seeds:
                        add(dataset, variant, seed)
        for row in self.real_text.get("rows", []):
            for variant in row["variants"]:
                for seed in self.seeds if variant != "-" else ():
                    add(row["dataset"], variant, seed)
        if self.robustness:
            dataset = self.robustness["dataset"]
            test_levels = tuple(self.robustness_levels("test_time"))
            for variant in self.robustness.get("variants", []):
                for seed in self.seeds:
                    add(dataset, variant, seed, tests=test_levels)
            for corruption in self.robustness_levels("train_and_test"):
                for variant in self.robustness["train_and_test"].get("variants", []):
                    for seed in self.seeds:
                        add(dataset, variant, seed, corruption)
        return sorted(cells.values(), key=lambda c: c.train_corruption is not None)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{where}: expected a list")
    return tuple(str(v) for v in value)


def _blocks(raw: Any, where: str, grid: Grid) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    blocks = []
    for index, block in enumerate(raw or []):
        here = f"{where}[{index}]"
        if not isinstance(block, Mapping):
            raise ConfigError(f"{here}: expected a mapping with datasets and variants")
        datasets = _strings(block.get("datasets"), f"{here}.datasets")
        variants = _strings(block.get("variants"), f"{here}.variants")
        _check_names(datasets, grid.datasets, f"{here}.datasets")
        _check_names(variants, grid.variants, f"{here}.variants")
        blocks.append((datasets, variants))
    return blocks


def _check_names(names: tuple[str, ...], known: Mapping, where: str) -> None:
    for name in names:
        if name not in known:
            raise ConfigError(f"{where}: {name!r} is not defined (known: {', '.join(known)})")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; mistakes raise a one-line :class:`ConfigError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    raw = _yaml_load(path.read_text()) or {}
    where = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - {"seeds", "overrides", "datasets", "variants", "baseline", "corruption_seed",
                                 "earlier", "real_text", *SECTIONS})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key")
    datasets = {}
    for name, spec in (raw.get("datasets") or {}).items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: datasets.{name}: expected a mapping with config (and path)")
        extra = sorted(set(spec) - {"config", "path", "title", "prepare"})
        if extra:
            raise ConfigError(f"{where}: datasets.{name}.{extra[0]}: unknown key")
        datasets[str(name)] = DatasetSpec(str(name), spec.get("config"), spec.get("path"),
                                          spec.get("title", ""), spec.get("prepare"))
    variants = {str(k): _strings(v, f"{where}: variants.{k}") for k, v in (raw.get("variants") or {}).items()}
    seeds = tuple(int(s) for s in _strings(raw.get("seeds", [1, 2, 3]), f"{where}: seeds"))
    if not datasets or not variants or not seeds:
        raise ConfigError(f"{where}: needs datasets, variants and seeds")
    baseline = str(raw.get("baseline", next(iter(variants))))
    _check_names((baseline,), variants, f"{where}: baseline")
    grid = Grid(datasets=datasets, variants=variants, seeds=seeds, baseline=baseline,
                overrides=_strings(raw.get("overrides"), f"{where}: overrides"),
                corruption_seed=int(raw.get("corruption_seed", 1234)), source=where)
    grid.ablation = _blocks(raw.get("ablation"), f"{where}: ablation", grid)
    grid.speaker_graph = _blocks(raw.get("speaker_graph"), f"{where}: speaker_graph", grid)
    earlier = raw.get("earlier") or {}
    if earlier:
        if not isinstance(earlier, Mapping) or set(earlier) - {"summary", "note"} or "summary" not in earlier:
            raise ConfigError(f"{where}: earlier: expected a mapping with summary (a file) and note")
        grid.earlier = {"summary": str(earlier["summary"]), "note": str(earlier.get("note", "earlier results"))}
    if raw.get("real_text"):
        grid.real_text = _real_text(raw["real_text"], grid, f"{where}: real_text")
    robustness = raw.get("robustness") or {}
    if robustness:
        _check_robustness(robustness, grid, f"{where}: robustness")
        grid.robustness = dict(robustness)
    return grid


def _real_text(section: Any, grid: Grid, where: str) -> dict[str, Any]:
    if not isinstance(section, Mapping) or set(section) - {"columns", "rows", "published", "note"}:
        raise ConfigError(f"{where}: expected a mapping with columns, rows, published (and note)")
    columns = _strings(section.get("columns"), f"{where}.columns")
    rows = []
    for index, row in enumerate(section.get("rows") or []):
        here = f"{where}.rows[{index}]"
        if not isinstance(row, Mapping) or set(row) - {"dataset", "features", "variants"}:
            raise ConfigError(f"{here}: expected a mapping with dataset, features and variants")
        _check_names((str(row.get("dataset", "")),), grid.datasets, f"{here}.dataset")
        variants = _strings(row.get("variants"), f"{here}.variants")
        if len(variants) != len(columns):
            raise ConfigError(f"{here}.variants: one variant per column ({len(columns)}), got {len(variants)}")
        _check_names(tuple(v for v in variants if v != "-"), grid.variants, f"{here}.variants")
        rows.append({"dataset": str(row["dataset"]), "features": str(row.get("features", "")),
                     "variants": tuple(v for v in variants)})
    published = []
    for index, item in enumerate(section.get("published") or []):
        here = f"{where}.published[{index}]"
        needed = {"method", "encoder", "selection", "scores"}
        if not isinstance(item, Mapping) or set(item) != needed or not isinstance(item["scores"], Mapping):
            raise ConfigError(f"{here}: expected method, encoder, selection and scores (dataset -> weighted F1)")
        published.append(dict(item))
    return {"columns": columns, "rows": rows, "published": published, "note": str(section.get("note", ""))}


def _check_robustness(section: Mapping, grid: Grid, where: str) -> None:
    _check_names((section.get("dataset", ""),), grid.datasets, f"{where}.dataset")
    _check_names(_strings(section.get("variants"), f"{where}.variants"), grid.variants, f"{where}.variants")
    for part in ("test_time", "train_and_test"):
        levels = section.get(part) or {}
        for kind, values in levels.items():
            if kind == "variants" and part == "train_and_test":
                _check_names(_strings(values, f"{where}.{part}.variants"), grid.variants, f"{where}.{part}.variants")
                continue
            if kind not in KINDS:
                raise ConfigError(f"{where}.{part}.{kind}: unknown corruption; expected one of {KINDS}")
            try:
                [Corruption(kind, float(v)) for v in values]
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{where}.{part}.{kind}: {error}") from None
