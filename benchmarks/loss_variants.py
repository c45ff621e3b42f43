"""Do soft ordinal labels help here? CoOp with its hard cross-entropy against the same prompts trained with
Gaussian soft-label CE or DLDL instead, over several training seeds, on the pipeline's own data and backbone.

Usage, after `dvc repro` (it reads data/manifest.parquet and models/backbone.safetensors and writes nothing
of the pipeline's; its models go to a temporary folder):
    python benchmarks/loss_variants.py [--seeds 0 1 2] [--out benchmarks/results/loss_variants]
Writes <out>/loss_variants.md (mean ± std over seeds of the test metrics) and <out>/loss_variants.csv.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import tempfile
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from numclip.config import load_params
from numclip.config.paths import rebased
from numclip.stages.evaluate import evaluate
from numclip.stages.train import train

HERE = Path(__file__).resolve().parent
# name -> the method's params (CoOp's prompts; only the loss differs)
VARIANTS = {
    "coop (ce + kl)": "{learner: plain, loss: {ce: 1.0, kl: 1.0}}",
    "coop soft_ce (sigma 1) + kl": "{learner: plain, loss: {ce: 0.0, kl: 1.0, soft_ce: 1.0, soft_sigma: 1.0}}",
    "coop dldl (sigma 1) + kl": "{learner: plain, loss: {ce: 0.0, kl: 1.0, dldl: 1.0, soft_sigma: 1.0}}",
}
COLUMNS = ["test_mae", "test_mae_expectation", "test_accuracy", "test_ece", "test_nll", "test_rps", "coverage",
           "width"]  # of the comparison table's (evaluate.columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(HERE / "results" / "loss_variants"))
    args = parser.parse_args()
    out = Path(args.out)
    columns = [load_params("params.yaml").evaluate.column(name) for name in COLUMNS]
    rows = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="loss-variants-") as work:  # models, runs and figures: not kept
        for seed in args.seeds:
            for index, (label, method) in enumerate(VARIANTS.items()):
                name = f"variant{index}"
                params = load_params("params.yaml", [f"methods.{name}={method}", f"train.seed={seed}"])
                params = rebased(params, Path(work) / f"seed{seed}", ["train", "evaluate"])
                train(params, name, log=lambda _: None)
                result = evaluate(params, name, log=lambda _: None)
                rows.append({"variant": label, "seed": seed,
                             **{header: result[section][key] for header, section, key in columns}})
                print(f"seed {seed} {label}: test MAE {result['test']['mae_argmax']:.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "loss_variants.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Measured {datetime.date.today()}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"train.seed in {args.seeds}, {time.time() - start:.0f} s. Mean ± std over the seeds.", "",
             "| variant | " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for label in VARIANTS:
        cells = []
        for header, _, _ in columns:
            values = [r[header] for r in rows if r["variant"] == label]
            cells.append(f"{mean(values):.3f} ± {stdev(values) if len(values) > 1 else 0.0:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "loss_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
