"""End to end on tiny data through the CLI (`numclip run`: every dvc.yaml stage, ingest -> pretrain ->
prototypes -> train -> evaluate -> counting), then predict.

One module-scoped run (a few seconds per method on 2 CPU cores); the tests then check its outputs:
learning happened, TensorBoard holds the logs, save -> load -> predict is exact, and prototype-only
inference equals full-model inference.
"""

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import copy_pipeline
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from numclip.cli import main
from numclip.commands.predict import predict
from numclip.data import ImageRankDataset, read_manifest
from numclip.evaluation.inference import collect_logits
from numclip.models.head import load_head
from numclip.models.ordinal import load_model

K = 5
TINY = [f"data.num_ranks={K}", "data.synthetic.num_images=600", "data.synthetic.image_size=48",
        "pretrain.epochs=6", "pretrain.batch_size=32", "train.epochs=6", "train.batch_size=32",
        "evaluate.batch_size=64", "task.concepts.edges=[0, 1, 3]",
        "task.concepts.names=[a single, a few, several]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    copy_pipeline(root)
    old = Path.cwd()
    os.chdir(root)
    try:
        args = [a for o in TINY for a in ("--set", o)]
        assert main(["run", *args]) == 0
    finally:
        os.chdir(old)
    return root


def _metrics(root: Path, method: str) -> dict:
    return json.loads((root / "metrics" / "eval" / f"{method}.json").read_text())


def test_pretraining_gives_a_language_prior(run_dir):
    pretrain = json.loads((run_dir / "metrics" / "pretrain.json").read_text())
    assert pretrain["history"][-1]["loss"] < pretrain["history"][0]["loss"]
    assert pretrain["zero_shot_test"]["accuracy"] > 1.5 / K, "zero-shot is above chance after pretraining"
    assert _metrics(run_dir, "zeroshot")["test"]["accuracy"] == pytest.approx(pretrain["zero_shot_test"]["accuracy"])


def test_trained_methods_learn_and_beat_zero_shot(run_dir):
    zero = _metrics(run_dir, "zeroshot")
    for method in ("coop", "ordinalclip"):
        m = _metrics(run_dir, method)
        for split in ("val", "test"):
            assert m[split]["mae_argmax"] < zero[split]["mae_argmax"], (method, split)
        assert m["test"]["accuracy"] > zero["test"]["accuracy"], method
        train_log = json.loads((run_dir / "metrics" / "train" / f"{method}.json").read_text())
        assert train_log["val"]["mae_argmax"] == min(h["mae_argmax"] for h in train_log["history"])
        assert m["best_epoch"] == train_log["best_epoch"], "the saved model is the one selected on val"


def test_loss_decreases_and_tensorboard_holds_scalars_and_images(run_dir):
    events = EventAccumulator(str(run_dir / "runs" / "coop"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/ce", "train/kl", "lr/context", "lr/rank", "lr/image_encoder",
                "val/mae_argmax", "val/accuracy"):
        assert tag in tags["scalars"], tag
    assert "prototypes/similarity" in tags["images"]
    image = events.Images("prototypes/similarity")[-1]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    loss = [e.value for e in events.Scalars("train/loss")]
    n = max(len(loss) // 5, 1)
    assert sum(loss[-n:]) / n < sum(loss[:n]) / n, "training lowers the loss"
    lrs = [e.value for e in events.Scalars("lr/context")]
    assert lrs[0] > lrs[-1], "cosine schedule decays the learning rate"
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams"), "hyper-parameters are logged"


def test_evaluation_outputs(run_dir):
    m = _metrics(run_dir, "ordinalclip")
    for key in ("mae_argmax", "mae_expectation", "accuracy", "off_by_one", "spearman", "per_rank_mae", "confusion"):
        assert key in m["test"]
    assert sum(map(sum, m["test"]["confusion"])) == m["test"]["n"]
    assert 0.0 <= m["ordinality"]["overall"] <= 1.0
    assert m["ordinality_initial"] is not None, "the cached initial prototypes are compared"
    for key in ("mae_median", "kendall_tau", "balanced_accuracy", "macro_f1", "cs@0", "cs@2", "ece", "nll", "rps"):
        assert m["test"][key] is not None, key
    assert m["test"]["cs@0"] == pytest.approx(m["test"]["accuracy"])
    intervals = m["conformal"]
    assert intervals["alpha"] == 0.1 and intervals["n"] == m["test"]["n"]
    assert 0.6 <= intervals["coverage"] <= 1 and 1 <= intervals["mean_width"] <= K
    assert len(intervals["per_rank_width"]) == K and intervals["curve"]["nominal"] == pytest.approx(
        [0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    for name in ("confusion", "per_rank_error", "prototype_similarity", "intervals"):
        assert (run_dir / "figures" / "ordinalclip" / f"{name}.png").stat().st_size > 5000
    per_rank = list(csv.DictReader((run_dir / "plots" / "per_rank_error" / "ordinalclip.csv").open()))
    assert [int(r["rank"]) for r in per_rank] == list(range(K))
    confusion = list(csv.DictReader((run_dir / "plots" / "confusion" / "ordinalclip.csv").open()))
    assert len(confusion) == m["test"]["n"]
    curves = list(csv.DictReader((run_dir / "plots" / "training" / "coop.csv").open()))
    assert [int(r["epoch"]) for r in curves] == list(range(1, 7))
    table = (run_dir / "metrics" / "comparison.md").read_text()
    assert all(f"| {m} |" in table for m in ("zeroshot", "coop", "ordinalclip"))
    rows = json.loads((run_dir / "metrics" / "comparison.json").read_text())
    assert rows["coop"]["test MAE (argmax)"] == pytest.approx(_metrics(run_dir, "coop")["test"]["mae_argmax"])
    assert all(row["test coverage"] is not None and row["test interval width"] for row in rows.values())
    assert "linear_probe" in rows and "| test coverage | test interval width |" in table


def test_predict_round_trip_and_prototype_only_inference(run_dir):
    manifest = read_manifest(run_dir / "data" / "manifest.parquet")
    model = load_model(run_dir / "models" / "coop.safetensors")
    test_rows = manifest.split("test")[:20]
    paths = [manifest.abs_path(r) for r in test_rows]
    full = predict(run_dir / "models" / "coop.safetensors", paths)
    head = predict(run_dir / "models" / "coop.safetensors", paths,
                   head_file=run_dir / "artifacts" / "heads" / "coop.safetensors")
    for a, b in zip(full, head):
        assert a.rank == b.rank and a.median == b.median
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert a.lo is None and 0 <= b.lo <= b.hi < K, "only an evaluated head carries the calibrated threshold"
    threshold = load_head(run_dir / "artifacts" / "heads" / "coop.safetensors").metadata["conformal"]["threshold"]
    assert threshold == pytest.approx(_metrics(run_dir, "coop")["conformal"]["threshold"])
    # the same as the evaluation path over the dataset
    logits, _ = collect_logits(model, ImageRankDataset(manifest, "test", model.preprocess), 64, torch.device("cpu"))
    assert [p.rank for p in full] == logits.argmax(1)[:20].tolist()
    assert full[0].probabilities == pytest.approx(torch.softmax(logits[0], 0).tolist(), abs=1e-5)


def test_predict_cli_on_folder_with_a_broken_image(run_dir, tmp_path, capsys):
    manifest = read_manifest(run_dir / "data" / "manifest.parquet")
    folder = tmp_path / "mine"
    folder.mkdir()
    for row in manifest.split("test")[:3]:
        (folder / Path(row.path).name).write_bytes(manifest.abs_path(row).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "pred.csv"
    code = main(["predict", str(folder), "--model", str(run_dir / "models" / "ordinalclip.safetensors"),
                 "--head", str(run_dir / "artifacts" / "heads" / "ordinalclip.safetensors"), "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4, "the unreadable image is reported, not dropped"
    broken = [r for r in rows if r["path"].endswith("broken.png")][0]
    assert broken["error"] and broken["rank"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(0 <= int(r["rank"]) < K for r in good)
    assert all(abs(sum(float(r[f"p_{k}"]) for k in range(K)) - 1) < 1e-4 for r in good)
    assert "could not be read" in capsys.readouterr().err


def test_prototype_cache_reencodes_only_changed_prompts(run_dir, monkeypatch):
    from numclip.config import load_params
    from numclip.models.prototype_cache import read_cache
    from numclip.stages.prototypes import compute_prototypes

    monkeypatch.chdir(run_dir)
    before, _ = read_cache("artifacts/prototypes.safetensors")
    report = compute_prototypes(load_params(None, TINY), log=lambda _: None)
    assert all(r["reused"] for r in report.values()), "unchanged prompts are never re-encoded"
    changed = compute_prototypes(load_params(None, TINY + ["methods.coop.context_init=a picture of"]),
                                 log=lambda _: None)
    assert [m for m, r in changed.items() if not r["reused"]] == ["coop"]
    after, _ = read_cache("artifacts/prototypes.safetensors")
    torch.testing.assert_close(after["ordinalclip"], before["ordinalclip"])
    assert not torch.equal(after["coop"], before["coop"])

    # the code that builds prompts is part of every key: after a code change nothing is reused
    monkeypatch.setattr("numclip.models.prototype_cache.code_fingerprint", lambda *modules: "other code")
    recoded = compute_prototypes(load_params(None, TINY + ["methods.coop.context_init=a picture of"]),
                                 log=lambda _: None)
    assert not any(r["reused"] for r in recoded.values())


def test_run_compares_the_count_aware_and_plain_backbones(run_dir):
    """`numclip run` also pretrains the plain-loss baseline, trains the methods of comparison.methods on
    it (zero-shot and CoOp), and ends with the counting comparison of the two backbones."""
    counting = json.loads((run_dir / "metrics" / "counting.json").read_text())
    assert set(counting) == {"count_aware", "plain"}
    for backbone in ("count_aware", "plain"):
        synthetic = counting[backbone]["synthetic"]
        assert synthetic["n"] > 0 and 0 <= synthetic["accuracy"] <= 1
        assert all(counting[backbone]["methods"][m] is not None for m in ("zeroshot", "coop"))
    assert all(v is None for m, v in counting["plain"]["methods"].items() if m not in ("zeroshot", "coop"))
    plain = json.loads((run_dir / "comparison" / "plain" / "metrics" / "pretrain.json").read_text())
    assert plain["source"].startswith("contrastive (plain CLIP loss)")
    assert (run_dir / "comparison" / "plain" / "models" / "coop.safetensors").is_file()
    assert "| zero-shot counting accuracy" in (run_dir / "metrics" / "counting.md").read_text()
