"""The papers' few-shot and distribution-shift protocols, in miniature, on the embedded data.

    python benchmarks/mini_protocols.py [--methods coop ordinalclip numclip_faithful] [--seeds 0]

Needs the pipeline's backbone (`dvc repro pretrain` or `numclip pretrain`): it plays the pretrained
CLIP that the papers fine-tune from. A reference run trains on all training images for the same
number of epochs. The runs (models included) go to protocols/mini/ (git-ignored);
the tables (runs.csv, results.csv, results.md) and the curves few_shot.png and distribution_shift.png
are copied to benchmarks/results/mini_protocols/. The embedded data has
10 ranks of about 210 training images each, so the shift protocol reduces the top 3 and 6 ranks
(the papers' MORPH runs reduce the top 10..40 of 62 ages).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from numclip.config import load_params
from numclip.protocols.curves import save_curve
from numclip.protocols.runner import run_protocol
from numclip.protocols.steps import Protocol, with_values

RESULTS = Path(__file__).resolve().parent / "results" / "mini_protocols"
TABLES = ("runs.csv", "results.csv", "results.md")
SHOTS = [1, 2, 4, 8, 16, 32, 64]
SHIFT = [(3, 0.2), (3, 0.1), (6, 0.2), (6, 0.1)]  # (top_k, keep_fraction): "3-80" … "6-90"


def run(args: argparse.Namespace) -> None:
    params = with_values(load_params("params.yaml"), {"train.epochs": args.epochs})
    run_protocol(params, Protocol(  # the reference: all training images, the same epochs
        name="full", methods=[m for m in args.methods if m != "zeroshot"], out_dir=args.work / "full",
        seeds=args.seeds, backbone=args.backbone))
    run_protocol(params, Protocol(
        name="few_shot", methods=args.methods, out_dir=args.work / "few_shot", seeds=args.seeds,
        grid={"train.subset.kind": ["few_shot"], "train.subset.shots": SHOTS}, backbone=args.backbone))
    for top_k, keep in SHIFT:
        run_protocol(params, Protocol(
            name=f"shift_{top_k}_{keep}", methods=args.methods, seeds=args.seeds,
            out_dir=args.work / "distribution_shift" / f"top{top_k}_keep{keep}", backbone=args.backbone,
            grid={"train.subset.kind": ["distribution_shift"], "train.subset.top_k": [top_k],
                  "train.subset.keep_fraction": [keep]}))


def _runs(folder: Path) -> list[dict]:
    return json.loads((folder / "protocol.json").read_text(encoding="utf-8"))["runs"]


def draw(work: Path, out: Path) -> None:
    """The curves and tables from the runs' records (protocol.json), so they can be redrawn."""
    save_curve(_runs(work / "few_shot"), "train.subset.shots", "mae_argmax", out / "few_shot.png",
               "Few-shot, embedded data: test MAE vs images per rank")
    shift_runs = []
    for top_k, keep in SHIFT:
        shift_runs += [{**r, "point": {"setting": f"{top_k}-{round((1 - keep) * 100)}"}}
                       for r in _runs(work / "distribution_shift" / f"top{top_k}_keep{keep}")]
    save_curve(shift_runs, "setting", "mae_argmax", out / "distribution_shift.png",
               "Distribution shift, embedded data: test MAE", log_x=False)
    for run_dir in [work / "full", work / "few_shot", *sorted((work / "distribution_shift").iterdir())]:
        for name in TABLES:
            target = out / run_dir.relative_to(work) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / name, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["zeroshot", "coop", "ordinalclip", "numclip_faithful"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per run (4)")
    parser.add_argument("--backbone", default="models/backbone.safetensors")
    parser.add_argument("--work", type=Path, default=Path("protocols/mini"), help="where the runs go")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the tables and curves go")
    parser.add_argument("--draw-only", action="store_true", help="redraw from the runs already in --work")
    args = parser.parse_args()
    start = time.time()
    if not args.draw_only:
        run(args)
    draw(args.work, args.out)
    print(f"mini-protocols done in {time.time() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
