"""Peak memory of `numclip predict` against the number of images: it streams, so it should stay flat.

Usage: python benchmarks/predict_memory.py [--sizes 1000 5000 10000] [--repeats 3] [--batch-size 64]

Builds a tiny random-init model (numclip-tiny, no download) and N distinct 48x48 PNGs in a temporary
directory, then runs `numclip predict` (its `main`, in a fresh process) per N and input kind: one
flat folder of N images, and a list file of N paths. Two measures per run:

- peak RSS: the kernel's high-water mark (ru_maxrss) when `main` returns. The process then leaves with
  os._exit, because torch's teardown pages in ~115 MiB of its shared libraries at exit, whatever N is.
- peak anonymous RSS: RssAnon from /proc, sampled every 10 ms: the heap, without library pages.

Identical runs differ by up to ~+-15 MiB (thread and allocator timing), so each point is run
--repeats times and the table gives the median and the range. Writes benchmarks/results/predict_memory.md
and prints the same markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from numclip.config import load_params
from numclip.models.backbone import create_backbone
from numclip.models.ordinal import build_model, save_model

RESULTS = Path(__file__).resolve().parent / "results" / "predict_memory.md"
CHILD = """import os, sys
from numclip.cli import main
code = main(["predict", *sys.argv[1:]])
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def make_inputs(root: Path, sizes: list[int]) -> dict[tuple[str, int], Path]:
    """N distinct PNGs, written once; each size gets a flat folder (hard links) and a list file."""
    rng = np.random.default_rng(0)
    pool = root / "pool"
    pool.mkdir()
    images = []
    for i in range(max(sizes)):
        path = pool / f"img{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
        images.append(path)
    inputs = {}
    for n in sizes:
        folder = root / f"folder{n}"
        folder.mkdir()
        for path in images[:n]:
            os.link(path, folder / path.name)
        listing = root / f"list{n}.txt"
        listing.write_text("".join(f"{p}\n" for p in images[:n]))
        inputs["folder", n], inputs["list file", n] = folder, listing
    return inputs


def rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:  # exited between two samples
        pass
    return 0


def run_predict(args: list[str], cwd: Path) -> tuple[float, float, float, str]:
    """(peak RSS MiB, peak anonymous RSS MiB, wall seconds, output) of one `numclip predict`."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        anon = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # this child's own rusage once it exits
            if pid:
                break
            anon = max(anon, rss_anon_kib(proc.pid))
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        sys.exit(f"numclip predict {' '.join(args)} failed:\n{text}")
    return usage.ru_maxrss / 1024, anon / 1024, wall, text.strip()  # ru_maxrss is in KiB on Linux


def markdown(runs: dict[tuple[str, int], list[tuple[float, float, float]]], sizes: list[int], repeats: int,
             batch_size: int) -> str:
    """The results table: per (input kind, N), the median and range of the runs' (rss, anon, wall)."""
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
               f"{datetime.date.today().isoformat()}")
    title = (f"`numclip predict`, numclip-tiny (random init), 48x48 PNGs, batch size {batch_size}, "
             f"median [min-max] of {repeats} runs; {machine}")
    header = (f"| input | images | peak RSS (MiB) | vs {sizes[0]} | peak anonymous RSS (MiB) | vs {sizes[0]} "
              "| wall (s) | images/s |")
    lines = [title, "", header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (kind, n), points in runs.items():
        rss, anon, wall = (sorted(column) for column in zip(*points))
        base_rss, base_anon, _ = (statistics.median(c) for c in zip(*runs[kind, sizes[0]]))
        lines.append(f"| {kind} | {n} | {statistics.median(rss):.1f} [{rss[0]:.1f}-{rss[-1]:.1f}] | "
                     f"{statistics.median(rss) - base_rss:+.1f} | "
                     f"{statistics.median(anon):.1f} [{anon[0]:.1f}-{anon[-1]:.1f}] | "
                     f"{statistics.median(anon) - base_anon:+.1f} | {statistics.median(wall):.1f} | "
                     f"{n / statistics.median(wall):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = load_params(None)
        torch.manual_seed(0)
        model = root / "model.safetensors"
        save_model(build_model(params, "coop", create_backbone(params.model)).eval(), model)
        (root / "params.yaml").write_text("")  # defaults, whatever this repository's params.yaml says
        start = time.perf_counter()
        inputs = make_inputs(root, sizes)
        print(f"wrote {max(sizes)} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for repeat in range(args.repeats):  # interleaved, so a slow spell on the machine hits every size
            for kind in ("folder", "list file"):
                for n in sizes:
                    out = root / "predictions.csv"
                    rss, anon, wall, log = run_predict(
                        [str(inputs[kind, n]), "--model", str(model), "--out", str(out),
                         "--params", str(root / "params.yaml"), "--set", f"predict.batch_size={args.batch_size}"],
                        root)
                    if sum(1 for _ in out.open()) != n + 1 or f"predicted {n} images" not in log:
                        sys.exit(f"{out} does not hold {n} predictions:\n{log}")
                    runs.setdefault((kind, n), []).append((rss, anon, wall))
                    print(f"repeat {repeat}, {kind}, {n}: peak {rss:.1f} MiB, anon {anon:.1f} MiB, {wall:.1f} s",
                          file=sys.stderr)

    table = markdown(runs, sizes, args.repeats, args.batch_size)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
