"""Assemble a shipped model from a training run: the run's checkpoint, the fine-tuned text encoder
it was trained on (bundled as ``text-encoder/``), and its model card (``card.json`` and
``MODEL_CARD.md``, figures read from the run's ``metrics.json``, nothing typed in by hand)::

    python -m redifu.pretrained.build RUN_DIR --encoder ENCODER_DIR --name meld-text \\
        --command "redifu data prepare meld ..." --command "..."

The run's test metrics are the ones its training measured once, at the dev-selected epoch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from redifu.checkpoint import load_checkpoint
from redifu.errors import CheckpointError
from redifu.features.finetuned_text import ENCODER_FILE, read_encoder_manifest
from redifu.files import atomic_directory
from redifu.pretrained import BUNDLED_ENCODER, CARD_FILE

__all__ = ["build_shipped_model", "render_card"]

CARD_TEXT_FILE = "MODEL_CARD.md"

INTENDED_USE = ("Emotion of each utterance in English, multi-party, scripted TV-series dialogue (the Friends "
                "episodes of MELD), from the transcript and the speakers' names; research and prototyping.")
LIMITS = [
    "Text only: tone of voice and faces are not seen; sarcasm and flat transcripts are often misread.",
    "Seven classes (MELD's): neutral, surprise, fear, sadness, joy, disgust, anger; nothing else can be predicted.",
    "Trained on one sitcom's scripted English: expect lower scores on other domains, spontaneous speech, "
    "ASR transcripts and other languages.",
    "Rare classes are weak (see per-class F1: fear and disgust have few training examples).",
    "Not for decisions about people (hiring, health, policing, surveillance): the scores above are the "
    "evidence of what it can do, and they are far from perfect.",
]
LICENCE = ("MELD (Poria et al., 2019) is distributed under the GNU GPL-3.0. These weights were trained on it, "
           "so we treat them as derived from it and distribute them under GPL-3.0 too, apart from the code's MIT "
           "licence: you may use, change and redistribute them, but whatever you redistribute that contains them "
           "(this model or one fine-tuned from it) must be under GPL-3.0 as well, with its source and this notice. "
           "Predictions you make with the model are yours. The base encoder all-MiniLM-L6-v2 is Apache-2.0.")


def _split_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"weighted_f1": round(metrics["weighted_f1"], 2), "accuracy": round(metrics["accuracy"], 2),
            "macro_f1": round(metrics["macro_f1"], 2), "utterances": metrics["num_utterances"],
            "per_class": {name: {"f1": round(row["f1"], 2), "support": row["support"]}
                          for name, row in metrics["per_class"].items()}}


def build_shipped_model(run: str | Path, encoder: str | Path, output: str | Path, *, name: str,
                        commands: Sequence[str], notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write the shipped model directory ``output`` (atomically); returns its card."""
    run, encoder, output = Path(run), Path(encoder), Path(output)
    checkpoint = load_checkpoint(run / "checkpoint")
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics.get("test") is None:
        raise CheckpointError(f"{run}/metrics.json: no test metrics (a run trained with evaluate_test=False)")
    manifest = read_encoder_manifest(encoder)
    if "adapter" not in manifest:
        raise CheckpointError(f"{encoder}: a whole fine-tuned encoder; ship LoRA factors (text finetune lora_rank=R)")
    recorded = (checkpoint.run.extractors or {}).get("text") or {}
    card = {
        "name": name,
        "task": "emotion of every utterance of a conversation (multimodal conversation emotion recognition, text path)",
        "labels": list(checkpoint.classes),
        "modalities": list(checkpoint.model.config.modalities),
        "data": {"dataset": metrics["dataset"].get("name"), "splits": metrics["dataset"].get("splits"),
                 "fingerprint": metrics.get("data_fingerprint"), "licence": LICENCE},
        "text_encoder": {"base": manifest["base"], "base_version": manifest["adapter"]["base_version"],
                         "lora_rank": manifest["adapter"]["rank"], "context": manifest["context"],
                         "selected_epoch": manifest["selected_epoch"],
                         "dev_weighted_f1": round(manifest["dev"]["weighted_f1"], 2),
                         "version": recorded.get("version")},
        "model": {"parameters": metrics.get("num_parameters"), "selected_epoch": metrics["selected_epoch"],
                  "seed": metrics.get("seed")},
        "selection": "epochs (encoder and model) selected on dev weighted F1; test evaluated once at the selected "
                     "checkpoint",
        "metrics": {"dev": _split_metrics(metrics["dev"]), "test": _split_metrics(metrics["test"])},
        "reproduce": list(commands),
        "intended_use": INTENDED_USE,
        "limits": LIMITS,
        "notes": list(notes),
        "redifu_version": metrics.get("environment", {}).get("redifu"),
        "commit": metrics.get("commit"),
    }
    with atomic_directory(output) as staging:
        for path in (run / "checkpoint").iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, staging / path.name)
        shutil.copytree(encoder, staging / BUNDLED_ENCODER, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (staging / CARD_TEXT_FILE).write_text(render_card(card))
    if not (output / BUNDLED_ENCODER / ENCODER_FILE).is_file():
        raise CheckpointError(f"{output}: the bundled encoder was not written")
    return card


def render_card(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` from ``card.json``."""
    dev, test = card["metrics"]["dev"], card["metrics"]["test"]
    encoder = card["text_encoder"]
    lines = [
        f"# Model card: redifu `{card['name']}`", "",
        f"The model `redifu predict` and `Predictor.from_pretrained()` use when no checkpoint is given. Task: "
        f"{card['task']}. Labels: {', '.join(card['labels'])}. Input: speaker names and transcripts "
        f"({', '.join(card['modalities'])}).", "",
        "## Model", "",
        f"- ReDiFu text path ({card['model']['parameters']:,} parameters, epoch {card['model']['selected_epoch']} "
        f"selected on dev, seed {card['model']['seed']}) over features from",
        f"- {encoder['base']} fine-tuned on the training split with LoRA rank {encoder['lora_rank']} (epoch "
        f"{encoder['selected_epoch']} selected on dev, {encoder['dev_weighted_f1']:.2f} dev weighted F1 for its own "
        f"classifier), context `{json.dumps(encoder['context'])}`; bundled as `text-encoder/`, the factors "
        f"merged into the pip-installed base, whose version must be `{encoder['base_version']}`.", "",
        "## Training data and licence", "",
        f"{card['data']['dataset']}, official splits (dev used for every choice). {card['data']['licence']}", "",
        "## Metrics", "",
        f"{card['selection']}. Percent.", "",
        "| split | utterances | weighted F1 | accuracy | macro F1 |", "|---|---|---|---|---|",
        f"| dev | {dev['utterances']} | {dev['weighted_f1']:.2f} | {dev['accuracy']:.2f} | {dev['macro_f1']:.2f} |",
        f"| test | {test['utterances']} | {test['weighted_f1']:.2f} | {test['accuracy']:.2f} | {test['macro_f1']:.2f} |",
        "", "Per class (F1, with the test support):", "",
        "| class | dev F1 | test F1 | test support |", "|---|---|---|---|",
    ]
    for name in card["labels"]:
        lines.append(f"| {name} | {dev['per_class'][name]['f1']:.2f} | {test['per_class'][name]['f1']:.2f} | "
                     f"{test['per_class'][name]['support']} |")
    lines += ["", "`tests/test_pretrained.py` checks that the shipped weights reproduce the test figures on MELD "
              "from `../shared/data/meld`.", "", "## Reproduce", "", "```sh", *card["reproduce"], "```", "",
              "## Intended use", "", card["intended_use"], "", "## Limits", "", *[f"- {x}" for x in card["limits"]]]
    if card.get("notes"):
        lines += ["", "## Notes", "", *[f"- {x}" for x in card["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redifu.pretrained.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="training run directory (with checkpoint/ and metrics.json)")
    parser.add_argument("--encoder", required=True, help="the LoRA text encoder directory the run's data came from")
    parser.add_argument("--name", required=True)
    parser.add_argument("--output", help="default: the package's redifu/pretrained/NAME")
    parser.add_argument("--command", action="append", default=[], help="a command that reproduces it (repeat)")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else Path(__file__).resolve().parent / args.name
    try:
        card = build_shipped_model(args.run, args.encoder, output, name=args.name, commands=args.command,
                                   notes=args.note)
    except (CheckpointError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{output}: dev {card['metrics']['dev']['weighted_f1']:.2f}, test {card['metrics']['test']['weighted_f1']:.2f} "
          "weighted F1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
