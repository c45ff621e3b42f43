"""Evaluation: metrics JSON per method, plot data for `dvc plots`, figures for people, the exported
prototype head, and the comparison table of all methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from numclip.config import Params
from numclip.config.paths import head_path, metrics_path, model_path
from numclip.core.atomic import write_csv, write_json, write_text
from numclip.core.errors import NumclipError
from numclip.data import ImageRankDataset
from numclip.data.manifest import load_checked_manifest
from numclip.evaluation.diagnosis import TRAIN_HINT, learning_warnings, report
from numclip.evaluation.inference import collect_logits, metrics_from_logits
from numclip.evaluation.metrics import prototype_ordinality, similarity_matrix
from numclip.evaluation.plots import confusion_figure, per_rank_error_figure, save_figure, similarity_figure
from numclip.models.backbone import resolve_device
from numclip.models.head import save_prototypes
from numclip.models.ordinal import load_model
from numclip.models.prototype_cache import initial_prototypes

SPLITS = ("val", "test")


def evaluate(params: Params, method: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the saved model of `method` on val and test; write metrics, plot data, figures and its head."""
    params.method(method)  # unknown names fail here, before any file is touched
    device = resolve_device(params.model.device)
    manifest = load_checked_manifest(params)
    model = load_model(model_path(params, method), device)
    if model.num_ranks != manifest.num_ranks:
        raise NumclipError(f"{model_path(params, method)} predicts {model.num_ranks} ranks but the "
                           f"manifest has {manifest.num_ranks}: retrain it")
    with torch.no_grad():
        prototypes = model.prototypes().float()
        scale = float(model.logit_scale())
    result: dict[str, Any] = {"method": method, "best_epoch": model.card.best_epoch}
    shown_logits = shown_targets = None
    for split in SPLITS:
        dataset = ImageRankDataset(manifest, split, model.preprocess)
        logits, targets = collect_logits(model, dataset, params.evaluate.batch_size, device, prototypes)
        result[split] = metrics_from_logits(model, logits, targets)
        if split == params.evaluate.split:
            shown_logits, shown_targets = logits, targets
    result["warnings"] = learning_warnings(result["test"], model.num_ranks, f"{method} on test")
    result["ordinality"] = prototype_ordinality(prototypes.cpu())
    initial = initial_prototypes(params, method)
    result["ordinality_initial"] = None if initial is None else prototype_ordinality(initial)["overall"]

    save_prototypes(head_path(params, method), prototypes, scale,
                    model.card.head_metadata())
    shown = result[params.evaluate.split]
    plots = Path(params.evaluate.plots_dir)
    write_csv(plots / "per_rank_error" / f"{method}.csv", ["rank", "mae_argmax", "count"],
              [[k, mae, n] for k, (mae, n) in enumerate(zip(shown["per_rank_mae"], shown["per_rank_count"]))])
    write_csv(plots / "confusion" / f"{method}.csv", ["actual", "predicted"],
              list(zip(shown_targets.tolist(), model.readout(shown_logits.to(device))[0].tolist())))
    figures = Path(params.evaluate.figures_dir) / method
    save_figure(confusion_figure(shown["confusion"], model.card.rank_words), figures / "confusion.png")
    save_figure(per_rank_error_figure(shown["per_rank_mae"], shown["per_rank_count"]),
                figures / "per_rank_error.png")
    axis = "concept" if params.method(method).head == "concepts" else "rank"
    save_figure(similarity_figure(similarity_matrix(prototypes.cpu()),
                                  title=f"{method}: cosine similarity of {axis} prototypes",
                                  labels=model.card.prompt_words, axis=axis),
                figures / "prototype_similarity.png")
    write_json(metrics_path(params, method), result)
    log(f"{method}: {params.evaluate.split} MAE {shown['mae_argmax']:.3f} (argmax) "
        f"{shown['mae_expectation']:.3f} (expectation), accuracy {shown['accuracy']:.3f} -> "
        f"{metrics_path(params, method)}")
    report(result["warnings"], TRAIN_HINT)
    return result


COLUMNS = [  # (header, section, key)
    ("val MAE", "val", "mae_argmax"),
    ("test MAE (argmax)", "test", "mae_argmax"),
    ("test MAE (expectation)", "test", "mae_expectation"),
    ("test accuracy", "test", "accuracy"),
    ("test off-by-one", "test", "off_by_one"),
    ("test Spearman", "test", "spearman"),
    ("prototype ordinality", "ordinality", "overall"),
]


SUMMARY = [  # (key, section, metric): one row per method in `dvc metrics show`
    ("val_mae", "val", "mae_argmax"),
    ("test_mae", "test", "mae_argmax"),
    ("test_mae_expectation", "test", "mae_expectation"),
    ("test_accuracy", "test", "accuracy"),
]


def compare(params: Params, methods: list[str]) -> str:
    """Comparison table of the methods' metrics files: JSON keyed by method and markdown beside it,
    plus one small summary file per method (what `dvc metrics show` lists, a row each)."""
    table: dict[str, dict[str, Any]] = {}
    summary_dir = Path(params.evaluate.summary_dir)
    warned = {}
    for method in methods:
        path = metrics_path(params, method)
        if not path.is_file():
            raise NumclipError(f"no metrics for method '{method}' ({path}): run `numclip evaluate "
                               f"--method {method}` first")
        result = json.loads(path.read_text())
        table[method] = {header: result[section].get(key) for header, section, key in COLUMNS}
        warned[method] = result.get("warnings", [])
        table[method]["warnings"] = warned[method]
        write_json(summary_dir / f"{method}.json",
                   {**{k: result[section].get(key) for k, section, key in SUMMARY},
                    "warnings": len(warned[method])})
    header = ["method"] + [h for h, _, _ in COLUMNS] + ["warnings"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in table.items():
        cells = [method] + ["n/a" if row[h] is None else f"{row[h]:.3f}" for h, _, _ in COLUMNS]
        cells.append(f"⚠ {len(warned[method])}" if warned[method] else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- ⚠ {method}: {w}" for method, ws in warned.items() for w in ws]
    if notes:
        lines += ["", "**Warning: these models learned nothing** (" + TRAIN_HINT + "):", *notes]
    markdown = "\n".join(lines) + "\n"
    out = Path(params.evaluate.comparison)
    write_json(out, table)
    write_text(out.with_suffix(".md"), markdown)
    return markdown
