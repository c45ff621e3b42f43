"""Evaluation: metrics JSON per method, plot data for `dvc plots`, figures for people, the exported
prototype head, and the comparison table of all methods."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from numclip.config import Params
from numclip.config.paths import head_path, metrics_path, model_path
from numclip.config.schema import ConformalConfig
from numclip.core.atomic import write_csv, write_json, write_text
from numclip.core.errors import NumclipError
from numclip.data import ImageRankDataset
from numclip.data.manifest import load_checked_manifest
from numclip.evaluation.conformal import (
    calibrate,
    conformal_scores,
    coverage_curve,
    interval_report,
    prediction_intervals,
)
from numclip.evaluation.diagnosis import TRAIN_HINT, learning_warnings, report
from numclip.evaluation.groups import aggregate_groups
from numclip.evaluation.inference import collect_logits, metrics_from_logits
from numclip.evaluation.metrics import ordinal_metrics, prototype_ordinality, similarity_matrix
from numclip.evaluation.plots import (
    confusion_figure,
    interval_figure,
    per_rank_error_figure,
    save_figure,
    similarity_figure,
)
from numclip.models.backbone import resolve_device
from numclip.models.head import save_prototypes
from numclip.models.ordinal import RankPromptModel, load_model
from numclip.models.prototype_cache import initial_prototypes

SPLITS = ("val", "test")


def evaluate(params: Params, method: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the saved model of `method` on val and test; write metrics, plot data, figures and its head."""
    params.method(method)  # unknown names fail here, before any file is touched
    cfg = params.evaluate
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
    logits, targets, probs = {}, {}, {}
    for split in SPLITS:
        dataset = ImageRankDataset(manifest, split, model.preprocess)
        logits[split], targets[split] = collect_logits(model, dataset, cfg.batch_size, device, prototypes)
        result[split] = metrics_from_logits(model, logits[split], targets[split], cfg.cs_k)
        probs[split] = model.rank_probabilities(logits[split]).numpy()
        groups = [row.group for row in dataset.rows]
        if any(g is not None for g in groups):
            result[f"{split}_groups"] = _group_metrics(model, logits[split], targets[split], groups,
                                                       cfg.group_aggregate)
    result["warnings"] = learning_warnings(result["test"], model.num_ranks, f"{method} on test")
    result["ordinality"] = prototype_ordinality(prototypes.cpu())
    initial = initial_prototypes(params, method)
    result["ordinality_initial"] = None if initial is None else prototype_ordinality(initial)["overall"]
    result["conformal"] = intervals = _intervals(cfg.conformal, probs, targets, model.num_ranks)

    conformal = {"alpha": intervals["alpha"], "threshold": intervals["threshold"], "calibrated_on": "val"}
    save_prototypes(head_path(params, method), prototypes, scale,
                    {**model.card.head_metadata(), "conformal": conformal}, bias=model.head_bias())
    shown = result[cfg.split]
    shown_logits, shown_targets = logits[cfg.split], targets[cfg.split]
    plots = Path(cfg.plots_dir)
    write_csv(plots / "per_rank_error" / f"{method}.csv", ["rank", "mae_argmax", "count"],
              [[k, mae, n] for k, (mae, n) in enumerate(zip(shown["per_rank_mae"], shown["per_rank_count"]))])
    write_csv(plots / "confusion" / f"{method}.csv", ["actual", "predicted"],
              list(zip(shown_targets.tolist(), model.readout(shown_logits.to(device))[0].tolist())))
    curve = intervals["curve"]
    write_csv(plots / "coverage" / f"{method}.csv", ["nominal", "coverage", "mean_width"],
              list(zip(curve["nominal"], curve["coverage"], curve["mean_width"])))
    figures = Path(cfg.figures_dir) / method
    save_figure(confusion_figure(shown["confusion"], model.card.rank_words), figures / "confusion.png")
    save_figure(per_rank_error_figure(shown["per_rank_mae"], shown["per_rank_count"]),
                figures / "per_rank_error.png")
    save_figure(interval_figure(curve, intervals["per_rank_width"], intervals["per_rank_coverage"],
                                intervals["alpha"]), figures / "intervals.png")
    axis = "concept" if params.method(method).head == "concepts" else "rank"
    save_figure(similarity_figure(similarity_matrix(prototypes.cpu()),
                                  title=f"{method}: cosine similarity of {axis} prototypes",
                                  labels=model.card.prompt_words, axis=axis),
                figures / "prototype_similarity.png")
    write_json(metrics_path(params, method), result)
    log(f"{method}: {cfg.split} MAE {shown['mae_argmax']:.3f} (argmax) "
        f"{shown['mae_expectation']:.3f} (expectation), accuracy {shown['accuracy']:.3f}; test intervals at "
        f"alpha {intervals['alpha']:g}: coverage {intervals['coverage']:.3f}, width {intervals['mean_width']:.2f} "
        f"-> {metrics_path(params, method)}")
    report(result["warnings"], TRAIN_HINT)
    return result


def _group_metrics(model: RankPromptModel, logits: torch.Tensor, targets: torch.Tensor, groups: list,
                   how: str) -> dict[str, Any]:
    """Ordinal metrics of one prediction per group (a person, a video), pooled as evaluate.group_aggregate says."""
    device = next(model.parameters()).device
    rank, value = model.readout(logits.to(device))
    pooled = aggregate_groups(groups, targets.numpy(), rank.cpu().numpy(), value.float().cpu().numpy(),
                              model.num_ranks, how)
    metrics = ordinal_metrics(pooled["target"], pooled["rank"], pooled["value"], model.num_ranks)
    return {**metrics, "aggregate": how, "groups": len(pooled["groups"]),
            "mixed_label_groups": pooled["mixed_label_groups"], "ungrouped_images": pooled["ungrouped"]}


def _intervals(cfg: ConformalConfig, probs: dict[str, np.ndarray], targets: dict[str, torch.Tensor],
               num_ranks: int) -> dict[str, Any]:
    """Split conformal intervals: calibrated on val, their coverage and width measured on test (overall
    and per true rank), and the coverage at each of the figure's nominal levels."""
    threshold = calibrate(conformal_scores(probs["val"], targets["val"].numpy()), cfg.alpha)
    lo, hi = prediction_intervals(probs["test"], threshold)
    return {"alpha": cfg.alpha, "threshold": threshold if math.isfinite(threshold) else None,
            "calibration_images": int(targets["val"].numel()),
            **interval_report(lo, hi, targets["test"].numpy(), num_ranks),
            "curve": coverage_curve(probs["val"], targets["val"].numpy(), probs["test"], targets["test"].numpy(),
                                    cfg.curve_alphas)}


# The comparison columns (evaluate.column) of one row per method in `dvc metrics show`, within 120 columns (coverage and
# width: the test split's, of the intervals at evaluate.conformal.alpha).
SUMMARY = ("val_mae", "test_mae", "test_accuracy", "coverage", "width")


def compare(params: Params, methods: list[str]) -> str:
    """Comparison table of the methods' metrics files: JSON keyed by method and markdown beside it,
    plus one small summary file per method (what `dvc metrics show` lists, a row each)."""
    columns = [params.evaluate.column(name) for name in params.evaluate.columns]
    summary = {name: params.evaluate.column(name) for name in SUMMARY}
    table: dict[str, dict[str, Any]] = {}
    summary_dir = Path(params.evaluate.summary_dir)
    warned = {}
    for method in methods:
        path = metrics_path(params, method)
        if not path.is_file():
            raise NumclipError(f"no metrics for method '{method}' ({path}): run `numclip evaluate "
                               f"--method {method}` first")
        result = json.loads(path.read_text())
        table[method] = {header: result.get(section, {}).get(key) for header, section, key in columns}
        warned[method] = result.get("warnings", [])
        table[method]["warnings"] = warned[method]
        write_json(summary_dir / f"{method}.json",
                   {**{name: result.get(section, {}).get(key) for name, (_, section, key) in summary.items()},
                    "warnings": len(warned[method])})
    header = ["method"] + [h for h, _, _ in columns] + ["warnings"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in table.items():
        cells = [method] + ["n/a" if row[h] is None else f"{row[h]:.3f}" for h, _, _ in columns]
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
