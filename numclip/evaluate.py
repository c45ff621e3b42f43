"""Evaluation: metrics JSON per method, figures for people, the exported prototype head, and the
comparison table of all methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from numclip.atomic import write_json, write_text
from numclip.config import Params
from numclip.data import ImageRankDataset
from numclip.errors import NumclipError
from numclip.inference import collect_logits, metrics_from_logits
from numclip.metrics import prototype_ordinality, similarity_matrix
from numclip.models.backbone import resolve_device
from numclip.models.head import save_prototypes
from numclip.models.ordinal import load_model
from numclip.plots import confusion_figure, per_rank_error_figure, save_figure, similarity_figure
from numclip.train import load_checked_manifest, model_path

SPLITS = ("val", "test")


def head_path(params: Params, method: str) -> Path:
    return Path(params.evaluate.heads_dir) / f"{method}.safetensors"


def metrics_path(params: Params, method: str) -> Path:
    return Path(params.evaluate.metrics_dir) / f"{method}.json"


def evaluate(params: Params, method: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the saved model of `method` on val and test; write metrics, figures and its head."""
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
    result: dict[str, Any] = {"method": method, "best_epoch": model.info.get("best_epoch")}
    for split in SPLITS:
        dataset = ImageRankDataset(manifest, split, model.preprocess)
        logits, targets = collect_logits(model, dataset, params.evaluate.batch_size, device, prototypes)
        result[split] = metrics_from_logits(logits, targets, model.num_ranks)
    result["ordinality"] = prototype_ordinality(prototypes.cpu())

    save_prototypes(head_path(params, method), prototypes, scale,
                    {k: model.info[k] for k in ("method", "model", "rank_words", "preprocess")})
    shown = result[params.evaluate.split]
    words = model.info["rank_words"]
    plots = Path(params.evaluate.plots_dir) / method
    save_figure(confusion_figure(shown["confusion"], words), plots / "confusion.png")
    save_figure(per_rank_error_figure(shown["per_rank_mae"], shown["per_rank_count"]),
                plots / "per_rank_error.png")
    save_figure(similarity_figure(similarity_matrix(prototypes.cpu()),
                                  title=f"{method}: cosine similarity of rank prototypes"),
                plots / "prototype_similarity.png")
    write_json(metrics_path(params, method), result)
    log(f"{method}: {params.evaluate.split} MAE {shown['mae_argmax']:.3f} (argmax) "
        f"{shown['mae_expectation']:.3f} (expectation), accuracy {shown['accuracy']:.3f} -> "
        f"{metrics_path(params, method)}")
    return result


COLUMNS = [  # (header, split, key)
    ("val MAE", "val", "mae_argmax"),
    ("test MAE (argmax)", "test", "mae_argmax"),
    ("test MAE (expectation)", "test", "mae_expectation"),
    ("test accuracy", "test", "accuracy"),
    ("test off-by-one", "test", "off_by_one"),
    ("test Spearman", "test", "spearman"),
    ("prototype ordinality", "ordinality", "overall"),
]


def compare(params: Params, methods: list[str]) -> str:
    """Comparison table (markdown + JSON) of the methods' metrics files; returns the markdown."""
    rows = []
    for method in methods:
        path = metrics_path(params, method)
        if not path.is_file():
            raise NumclipError(f"no metrics for method '{method}' ({path}): run `numclip evaluate "
                               f"--method {method}` first")
        result = json.loads(path.read_text())
        rows.append({"method": method, **{h: result[s].get(k) for h, s, k in COLUMNS}})
    header = ["method"] + [h for h, _, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]] + ["n/a" if row[h] is None else f"{row[h]:.3f}" for h in header[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(params.evaluate.metrics_dir)
    write_json(out / "comparison.json", rows)
    write_text(out / "comparison.md", table)
    return table
