"""The counting stage: the count-aware backbone beside the plain-CLIP-loss one, on zero-shot counting
(synthetic held-out split and, when configured, CountBench), zero-shot ranking and every trained method.

Both backbones saw the same data, steps and seed; only the counting loss differs, so each row of the
table is what that loss changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from numclip.config import Params
from numclip.config.paths import model_path, plain_twin
from numclip.core.atomic import write_csv, write_json, write_text
from numclip.core.errors import NumclipError
from numclip.counting.attributes import attribute_accuracy
from numclip.counting.captions import COUNT_WORDS
from numclip.counting.countbench import (
    CountItem,
    evaluate_counting,
    read_countbench,
    synthetic_items,
)
from numclip.data import ImageRankDataset, Manifest
from numclip.data.manifest import load_checked_manifest
from numclip.evaluation.inference import collect_logits, metrics_from_logits
from numclip.evaluation.plots import confusion_figure, save_figure
from numclip.models.backbone import backbone_config, create_backbone, resolve_device
from numclip.models.ordinal import load_model

BACKBONES = {"count_aware": "count-aware", "plain": "plain CLIP loss"}  # JSON key -> column header
RANK_KEYS = ("accuracy", "mae_argmax")
METHOD_KEYS = ("mae_argmax", "accuracy")


def run_counting(params: Params, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate both backbones; write the metrics JSON, the markdown table, predictions and figures."""
    device = resolve_device(params.model.device)
    manifest = load_checked_manifest(params)
    variants = {"count_aware": params, "plain": plain_twin(params)}
    for name, p in variants.items():
        _check_backbone(name, p)
    synthetic = synthetic_items(manifest, params.counting.split)
    if not synthetic:
        log(f"counting: no {params.counting.split} caption names a single count two..ten: "
            "synthetic counting is n/a")
    countbench = _countbench(params, log)
    results, predictions = {}, []
    for name, p in variants.items():
        results[name], rows = _evaluate_backbone(name, p, manifest, synthetic, countbench, device, log)
        predictions += rows
    _write_outputs(params, results, predictions, countbench is not None)
    markdown = counting_table(params, results)
    log(markdown.rstrip("\n"))
    return results


def _check_backbone(name: str, params: Params) -> None:
    """Fail before any work if a backbone is missing, naming the plain one's own params key."""
    if name == "count_aware":
        backbone_config(params)
    elif not Path(params.pretrain.output).is_file():
        raise NumclipError(f"no plain-loss backbone at {params.pretrain.output} (pretrain.output under "
                           "plain_backbone.root): run `numclip pretrain --backbone plain` first")


# ------------------------------------------------------------------------------------- CountBench
def _countbench(params: Params, log: Callable[[str], None]) -> Optional[tuple[list[CountItem], list[dict]]]:
    """The configured CountBench copy (items, rejects), or None; the rejects CSV is written either way."""
    cfg = params.counting
    missing_csv = Path(cfg.output_dir) / "countbench_missing.csv"
    if cfg.countbench_json is None:
        write_csv(missing_csv, ["index", "image_url", "reason"], [])
        return None
    if cfg.countbench_images is None:
        raise NumclipError("counting.countbench_json is set but counting.countbench_images is not: "
                           "set it to the folder of the CountBench images you downloaded")
    items, rejects = read_countbench(cfg.countbench_json, cfg.countbench_images)
    write_csv(missing_csv, ["index", "image_url", "reason"],
              [[r["index"], r["image_url"], r["reason"]] for r in rejects])
    total = len(items) + len(rejects)
    log(f"counting: CountBench {cfg.countbench_json}: {len(items)} of {total} entries usable, "
        f"{len(rejects)} missing or rejected -> {missing_csv}")
    if not items:
        raise NumclipError(f"none of the {total} entries of {cfg.countbench_json} can be evaluated "
                           f"(images in {cfg.countbench_images}); the reasons are in {missing_csv}")
    return items, rejects


# -------------------------------------------------------------------------------------- a backbone
def _evaluate_backbone(name: str, params: Params, manifest: Manifest, synthetic: list[CountItem],
                       countbench: Optional[tuple[list[CountItem], list[dict]]], device: torch.device,
                       log: Callable[[str], None]) -> tuple[dict[str, Any], list[list]]:
    """One column of the table, and this backbone's per-image predictions as CSV rows."""
    backbone = create_backbone(backbone_config(params), device)
    cfg = params.counting
    result: dict[str, Any] = {"backbone": params.pretrain.output, "synthetic": None, "countbench": None}
    rows: list[list] = []
    datasets = {"synthetic": synthetic, "countbench": countbench[0] if countbench else None}
    for dataset, items in datasets.items():
        if not items:
            continue
        counted = evaluate_counting(backbone, items, device, cfg.batch_size)
        rows += [[name, dataset, *p] for p in counted.pop("predictions")]
        if dataset == "countbench":
            counted["n_missing"] = len(countbench[1])
        result[dataset] = counted
        save_figure(_confusion(counted, f"{BACKBONES[name]}: {dataset} counting"),
                    Path(cfg.output_dir) / f"{name}_{dataset}.png")
        log(f"counting: {BACKBONES[name]} backbone, {dataset}: accuracy {counted['accuracy']:.3f} "
            f"(chance {counted['chance_accuracy']:.3f}), MAD {counted['mad']:.3f}, n = {counted['n']}")
    result["attributes"] = _attributes(params, backbone, manifest, device)
    del backbone
    result["zero_shot_rank"] = zero_shot_rank(params.pretrain.metrics)
    compared = params.methods if name == "count_aware" else params.comparison.methods
    result["methods"] = {m: method_metrics(params, m, manifest, device) if m in compared else None
                         for m in params.methods}  # a twin's model of a method not compared may be stale
    return result, rows


def _attributes(params: Params, backbone, manifest: Manifest,
                device: torch.device) -> Optional[dict[str, Any]]:
    """The synthetic data's colour and shape words, chosen zero-shot: what the counting loss never
    trained, so a drop here is what count-awareness cost (None for other sources)."""
    if params.data.source != "synthetic":
        return None
    vocab = {"colour": params.data.synthetic.colours, "shape": params.data.synthetic.shapes}
    return {name: attribute_accuracy(backbone, manifest, params.counting.split, list(words), device,
                                     params.counting.batch_size) for name, words in vocab.items()}


def _confusion(counted: dict[str, Any], title: str):
    fig = confusion_figure(counted["confusion"], list(COUNT_WORDS))
    ax = fig.axes[0]
    ax.set_xlabel("predicted count (most similar caption)")
    ax.set_ylabel("true count")
    ax.set_title(f"{title} (n = {counted['n']}, accuracy {counted['accuracy']:.3f})")
    return fig


def zero_shot_rank(pretrain_metrics: str | Path) -> Optional[dict[str, float]]:
    """Zero-shot test accuracy/MAE with the template prompts, as the pretrain stage recorded them."""
    path = Path(pretrain_metrics)
    if not path.is_file():
        return None
    try:
        test = json.loads(path.read_text(encoding="utf-8")).get("zero_shot_test")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise NumclipError(f"{path} is not the pretrain stage's metrics JSON: {e}") from None
    return None if not isinstance(test, dict) else {k: test.get(k) for k in RANK_KEYS}


def method_metrics(params: Params, method: str, manifest: Manifest,
                   device: torch.device) -> Optional[dict[str, float]]:
    """Test MAE (argmax) and accuracy of the method trained on this backbone; None if not trained."""
    path = model_path(params, method)
    if not path.is_file():
        return None
    model = load_model(path, device)
    if model.num_ranks != manifest.num_ranks:
        raise NumclipError(f"{path} predicts {model.num_ranks} ranks but the manifest has "
                           f"{manifest.num_ranks}: retrain it")
    dataset = ImageRankDataset(manifest, "test", model.preprocess)
    logits, targets = collect_logits(model, dataset, params.counting.batch_size, device)
    metrics = metrics_from_logits(model, logits, targets)
    return {k: metrics[k] for k in METHOD_KEYS}


# ------------------------------------------------------------------------------------------ outputs
def _write_outputs(params: Params, results: dict[str, Any], predictions: list[list],
                   with_countbench: bool) -> None:
    cfg = params.counting
    write_json(cfg.metrics, results)
    write_text(cfg.table, counting_table(params, results))
    write_csv(Path(cfg.output_dir) / "predictions.csv",
              ["backbone", "dataset", "source", "true", "predicted"], predictions)
    if not with_countbench:  # figures of an earlier configuration would look current
        for name in BACKBONES:
            (Path(cfg.output_dir) / f"{name}_countbench.png").unlink(missing_ok=True)


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _get(result: dict[str, Any], *keys: str) -> Optional[float]:
    node: Any = result
    for k in keys:
        if node is None:
            return None
        node = node.get(k)
    return node


def counting_table(params: Params, results: dict[str, Any]) -> str:
    """Markdown: one row per quantity, one column per backbone."""
    split = params.counting.split
    rows: list[tuple[str, tuple[str, ...]]] = [
        (f"zero-shot counting accuracy ({split} split, counts 2–10; chance {1 / len(COUNT_WORDS):.3f})",
         ("synthetic", "accuracy")),
        ("counting mean absolute deviation", ("synthetic", "mad")),
    ]
    bench = results["count_aware"].get("countbench")
    if bench is not None:
        rows += [(f"CountBench accuracy (n = {bench['n']}, {bench['n_missing']} missing or rejected)",
                  ("countbench", "accuracy")),
                 ("CountBench mean absolute deviation", ("countbench", "mad"))]
    attributes = results["count_aware"].get("attributes") or {}
    rows += [(f"zero-shot {name} accuracy (other words of the caption; chance {a['chance_accuracy']:.3f})",
              ("attributes", name, "accuracy")) for name, a in attributes.items() if a is not None]
    rows += [("zero-shot rank accuracy (template prompts)", ("zero_shot_rank", "accuracy")),
             ("zero-shot rank MAE (template prompts)", ("zero_shot_rank", "mae_argmax"))]
    rows += [(f"{m} test MAE (argmax)", ("methods", m, "mae_argmax")) for m in params.methods]
    lines = ["| | " + " | ".join(BACKBONES.values()) + " |", "|---|" + "---|" * len(BACKBONES)]
    for label, keys in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(_get(results[b], *keys)) for b in BACKBONES) + " |")
    return "\n".join(lines) + "\n"
