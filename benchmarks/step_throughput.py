"""Images/s and peak memory of one training step of every numclip method, against plain fine-tuning.

Why: the question a user of real CLIP weights asks is what a numclip method costs over fine-tuning
the same model the way open_clip trains it. A numclip step encodes K prompts through the text
tower on every step (one per rank, or per concept for NumCLIP) where plain fine-tuning encodes one
caption per image, and the text tower can run cropped (up to the last pooled token, exact under
CLIP's causal mask; `TextTower.crop`) or at the full context. This script measures both, side by side
in one run, on a real open_clip architecture with random weights (no download) and random images.

Usage: python benchmarks/step_throughput.py [--arch ViT-B-16] [--batch N] [--ranks 101] [--steps N]
       [--warmup N] [--repeats N] [--threads N] [--methods coop numclip_fixed ...]

- numclip configurations: every trained method of params.yaml, at K = --ranks (the age task's words
  and template, NumCLIP's released age bins when K > 65, one concept per rank below that), with the
  text tower cropped and not. The step is the training loop's own (`numclip.stages.train.training_step`:
  both towers under autocast, `head_outputs`, `training_loss`, backward, the optimizer from
  `parameter_groups(params.train.lr)` and `make_optimizer`, the schedule).
- plain fine-tuning: open_clip's own training step: every parameter trainable, `encode_image` and
  `encode_text` of one caption per image (the open_clip tokenizer, full context), open_clip's
  `ClipLoss`, AdamW (open_clip's betas, eps and weight-decay groups), the logit-scale clamp.
- Timing: each configuration runs in its own fresh process, --warmup steps then --steps timed steps;
  the configurations are run round-robin, --repeats rounds, so a slow spell of the machine hits them
  alike. Step seconds are the median over all timed steps; images/s = batch / that median. CUDA is
  synchronised around each step, and runs under bf16 autocast (`numclip.evaluation.inference.autocast`).
  Defaults: batch 32, 3 warm-up, 10 timed steps, 3 rounds on CUDA; batch 8, 1 warm-up, 2 timed steps,
  1 round and one torch thread on CPU, where a ViT-B-16 step takes tens of seconds (DEFAULTS says why).
- Memory: "step peak" is the peak during the steps (warm-up included, so gradients and optimizer
  state are in it) minus the memory before the first step (the built model and the batch). On CUDA
  it is `torch.cuda.max_memory_allocated` after a reset, minus `memory_allocated` before; "process
  peak" is the max allocated itself. On CPU it is the peak resident set (VmHWM, reset through
  /proc/self/clear_refs just before the first step) minus VmRSS then; "process peak" is that VmHWM,
  torch's libraries included. Without clear_refs the CPU falls back to ru_maxrss, and says so.

Writes benchmarks/results/step_throughput_<device>.md (the table, with the machine, date, versions
and command line) and a CSV beside it, and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
from open_clip.loss import ClipLoss

from numclip.commands.bench_step import random_images
from numclip.config import ModelConfig, Params, load_params
from numclip.core.atomic import write_csv
from numclip.evaluation.inference import autocast
from numclip.models.backbone import Backbone, create_backbone, resolve_device
from numclip.models.ordinal import build_model
from numclip.stages.train import training_step
from numclip.training.schedules import make_optimizer, make_scheduler

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PLAIN = "plain fine-tuning"
MARK = "step-throughput-result "  # the child's result line on stdout
AGE_BINS_NEED = 66  # NumCLIP's released age bins start their last bin at 65: K must exceed it
DEFAULTS = {  # (batch, warmup, steps, repeats, torch threads) per device type
    "cuda": (32, 3, 10, 3, None),
    # ViT-B-16 at batch 8: 11 configurations in about 10 min on the 2-core CPU. One thread: with another
    # job on the cores, OpenMP's barriers make each parallel op wait for a time slice (a numclip-tiny step
    # measured 3.9 s on 2 threads against 0.10 s on 1), which would time op counts instead of work.
    "cpu": (8, 1, 2, 1, 1),
}


@dataclass(frozen=True)
class Spec:
    """One configuration: a numclip method with its text tower cropped or not, or plain fine-tuning."""

    config: str  # a method name, or PLAIN
    crop: Optional[bool]  # None for plain fine-tuning (open_clip's encode_text, always the full context)

    @property
    def cropping(self) -> str:
        return "full context (open_clip)" if self.crop is None else ("on" if self.crop else "off")


def bench_params(arch: str, ranks: int) -> Params:
    """The project's params.yaml at K = `ranks`: the age task (rank words 0..K-1 and its template),
    NumCLIP's released age bins where K allows them, else one concept per rank; no counting comparison."""
    concepts = "age" if ranks >= AGE_BINS_NEED else "levels"
    return load_params(REPO / "params.yaml", [
        f"model.arch={arch}", f"data.num_ranks={ranks}", "task.preset=age", "task.rank_words=null",
        "task.rank_words_file=null", "task.zeroshot_template=null", f"task.concepts.preset={concepts}",
        "task.concepts.edges=null", "task.concepts.names=null", "task.concepts.label_shift=0",
        "comparison.backbones=[]"])


def trained_methods(params: Params) -> list[str]:
    """Every method of the params that trains something (zero-shot trains nothing)."""
    return [name for name, method in params.methods.items() if method.trains]


def configurations(methods: list[str]) -> list[Spec]:
    return [Spec(PLAIN, None), *(Spec(m, crop) for m in methods for crop in (True, False))]


def _backbone(arch: str, device: torch.device) -> Backbone:
    torch.manual_seed(0)
    return create_backbone(ModelConfig(arch=arch), device)


def _batch(backbone: Backbone, batch: int, ranks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)  # the same images and labels for every configuration
    return random_images(backbone.model.visual, batch, device), torch.randint(0, ranks, (batch,)).to(device)


def numclip_step(method: str, crop: bool, arch: str, batch: int, ranks: int,
                 device: torch.device) -> tuple[Callable[[], object], str]:
    """(one training step of `method`, what its text pass runs), built as `numclip train` builds it."""
    params = bench_params(arch, ranks)
    backbone = _backbone(arch, device)
    model = build_model(params, method, backbone).train()
    model.text.crop = crop
    optimizer = make_optimizer(params, model.parameter_groups(params.train.lr))
    scheduler = make_scheduler(params, optimizer, steps_per_epoch=1000)
    images, labels = _batch(backbone, batch, ranks, device)
    weights = params.method(method).loss
    with torch.no_grad():
        embeddings, pool = model.prompts(model.text)
    text = f"{embeddings.shape[0]} prompts × {model.text.sequence_length(pool, embeddings.shape[1])} tokens"
    return lambda: training_step(model, optimizer, scheduler, images, labels, weights, name=method)[0], text


def plain_step(arch: str, batch: int, ranks: int, device: torch.device) -> tuple[Callable[[], object], str]:
    """(one step of open_clip's own training, what its text pass runs) on the same model and batch."""
    params = bench_params(arch, ranks)
    backbone = _backbone(arch, device)
    clip = backbone.model.train()
    for p in clip.parameters():
        p.requires_grad_(True)
    images, labels = _batch(backbone, batch, ranks, device)
    words = params.rank_words()
    texts = backbone.tokenizer([params.task.template.format(words[i]) for i in labels.tolist()]).to(device)
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(clip.named_parameters())
    optimizer = torch.optim.AdamW([  # open_clip_train's groups and its ViT defaults (betas, eps, wd)
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2}],
        lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()

    def step() -> torch.Tensor:
        with autocast(device):
            image_features = clip.encode_image(images, normalize=True)
            text_features = clip.encode_text(texts, normalize=True)
            loss = loss_fn(image_features, text_features, clip.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        return loss

    return step, f"{texts.shape[0]} captions × {texts.shape[1]} tokens"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024
    except OSError:
        return False


def measure_config(spec: Spec, arch: str, batch: int, ranks: int, warmup: int, steps: int,
                   threads: Optional[int] = None, device: Optional[torch.device] = None) -> dict[str, object]:
    """Build one configuration in this process, run `warmup` then `steps` timed steps: their seconds,
    the step's peak memory (MiB above the memory before the first step) and the process peak (MiB).
    `threads` sets torch's intra-op threads for the measurement (None: as they are)."""
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads or before_threads)
    try:
        return _measure_config(spec, arch, batch, ranks, warmup, steps, device or resolve_device("auto"))
    finally:
        torch.set_num_threads(before_threads)


def _measure_config(spec: Spec, arch: str, batch: int, ranks: int, warmup: int, steps: int,
                    device: torch.device) -> dict[str, object]:
    if spec.config == PLAIN:
        step, text = plain_step(arch, batch, ranks, device)
    else:
        step, text = numclip_step(spec.config, bool(spec.crop), arch, batch, ranks, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before, how = torch.cuda.memory_allocated(device), "cuda max_memory_allocated"
    elif _reset_peak_rss():
        before, how = _status_kib("VmRSS") * 1024, "peak RSS (VmHWM) during the steps"
    else:
        before, how = 0, "ru_maxrss of the whole process (no clear_refs here)"
    seconds = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{spec.config}: the loss became {loss.item()}")
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    elif before:
        peak = _status_kib("VmHWM") * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The kernel syncs RSS counters lazily, so a step that allocated nothing new can read a page below `before`.
    return {"seconds": seconds, "step_mib": max(peak - before, 0) / 2**20, "process_mib": peak / 2**20,
            "memory": how, "text": text, "device": device.type, "threads": torch.get_num_threads()}


def _run_child(spec: Spec, arch: str, batch: int, ranks: int, warmup: int, steps: int,
               threads: Optional[int]) -> dict[str, object]:
    """measure_config in a fresh process of this script, so its memory is its own."""
    job = json.dumps({"spec": asdict(spec), "arch": arch, "batch": batch, "ranks": ranks, "warmup": warmup,
                      "steps": steps, "threads": threads})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", job], capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{spec.config} (cropping {spec.cropping}) failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(MARK):])


def measure(specs: list[Spec], arch: str, batch: int, ranks: int, warmup: int, steps: int, repeats: int,
            threads: Optional[int] = None, isolate: bool = True,
            log: Callable[[str], None] = print) -> list[dict[str, object]]:
    """One row per configuration, the plain fine-tuning row first: the configurations run round-robin,
    `repeats` rounds, each in a fresh process (`isolate`) or in this one; medians over all timed steps,
    the largest memory of the rounds, and the ratios to plain fine-tuning."""
    specs = sorted(specs, key=lambda s: s.config != PLAIN)
    if specs[0].config != PLAIN:
        raise ValueError("the ratios need the plain fine-tuning configuration")
    runs: dict[Spec, list[dict[str, object]]] = {s: [] for s in specs}
    for repeat in range(repeats):
        for spec in specs:
            result = (_run_child(spec, arch, batch, ranks, warmup, steps, threads) if isolate
                      else measure_config(spec, arch, batch, ranks, warmup, steps, threads))
            runs[spec].append(result)
            log(f"round {repeat + 1}/{repeats}: {spec.config}, cropping {spec.cropping}: "
                f"{', '.join(f'{s:.2f}' for s in result['seconds'])} s, step peak {result['step_mib']:.0f} MiB")
    rows = []
    for spec, results in runs.items():
        median = statistics.median(s for r in results for s in r["seconds"])
        rows.append({"configuration": spec.config, "cropping": spec.cropping, "images_per_s": batch / median,
                     "step_s": median, "peak_mib": max(r["step_mib"] for r in results),
                     "process_peak_mib": max(r["process_mib"] for r in results), "text_pass": results[0]["text"],
                     "memory_measure": results[0]["memory"], "device": results[0]["device"],
                     "threads": results[0]["threads"],
                     "timed_steps": sum(len(r["seconds"]) for r in results)})
    base = rows[0]
    for row in rows:
        row["speed_vs_plain"] = row["images_per_s"] / base["images_per_s"]
        row["memory_vs_plain"] = _ratio(row["peak_mib"], base["peak_mib"])
    return rows


def _ratio(value: float, base: float) -> float:
    """value / base; a step that needed no new memory (0 MiB, which the CPU's peak RSS can read) is 1x
    another such step, and undefined against any other."""
    if base > 0:
        return value / base
    return 1.0 if value == base else float("nan")


def machine() -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo, and the cores."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), {os.cpu_count()} CPU cores"
    name = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        name = names[0] if names else name
    return f"CPU {name}, {os.cpu_count()} cores"


COLUMNS = [("configuration", "configuration", "{}"), ("cropping", "cropping", "{}"),
           ("images_per_s", "images/s", "{:.3g}"), ("step_s", "step seconds (median)", "{:.3g}"),
           ("peak_mib", "peak memory (MiB)", "{:.0f}"), ("speed_vs_plain", "images/s ÷ plain FT", "{:.2f}"),
           ("memory_vs_plain", "memory ÷ plain FT", "{:.2f}"), ("process_peak_mib", "process peak (MiB)", "{:.0f}"),
           ("text_pass", "text pass per step", "{}")]


def markdown(rows: list[dict[str, object]], header: list[str]) -> str:
    lines = [*header, "", "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def header_lines(rows: list[dict[str, object]], arch: str, batch: int, ranks: int, warmup: int, steps: int,
                 repeats: int, command: str, seconds: float, load: tuple[float, float],
                 isolate: bool = True) -> list[str]:
    device = rows[0]["device"]
    precision = "bf16 autocast" if device == "cuda" else "fp32"
    measure = str(rows[0]["memory_measure"])
    if device == "cuda":
        memory = "torch.cuda.max_memory_allocated during the steps minus memory_allocated before the first"
    elif measure.startswith("ru_maxrss"):
        memory = measure + ", model building included"
    else:
        memory = measure + " minus the RSS before the first step"
    return [f"# One training step: {arch}, K = {ranks}, batch {batch}, {precision}, random weights",
            "",
            f"- machine: {machine()}; {rows[0]['threads']} torch thread(s) per measuring process",
            f"- date: {datetime.date.today().isoformat()}; torch {torch.__version__}, open_clip "
            f"{open_clip.__version__}, Python {platform.python_version()}",
            f"- command: `{command}` ({seconds:.0f} s; 1-min load average {load[0]:.1f} at the start, "
            f"{load[1]:.1f} at the end)",
            f"- each configuration {'in a fresh process' if isolate else 'in one shared process'}, "
            f"{warmup} warm-up step(s) then {steps} timed, "
            f"{repeats} round(s) round-robin; step seconds: the median of the {rows[0]['timed_steps']} timed steps",
            f"- peak memory: {memory} (the step's gradients, optimizer state and activations); process peak: "
            "the peak itself" + (", torch's libraries included" if device != "cuda" else "")]


def run(arch: str = "ViT-B-16", batch: Optional[int] = None, ranks: int = 101, steps: Optional[int] = None,
        warmup: Optional[int] = None, repeats: Optional[int] = None, methods: Optional[list[str]] = None,
        threads: Optional[int] = None, out_dir: Path = RESULTS, command: str = "", isolate: bool = True,
        log: Callable[[str], None] = print) -> tuple[Path, list[dict[str, object]]]:
    """Measure every configuration and write the markdown table and the CSV; (the .md path, the rows).
    An argument left None takes the device's default (DEFAULTS)."""
    start, load = time.perf_counter(), os.getloadavg()[0]
    device = resolve_device("auto")
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    batch, warmup, steps, repeats, threads = (given if given is not None else default for given, default in
                                              zip((batch, warmup, steps, repeats, threads), defaults))
    known = trained_methods(bench_params(arch, ranks))
    methods = known if methods is None else methods
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"--methods: {', '.join(unknown)} not among the trained methods ({', '.join(known)})")
    rows = measure(configurations(methods), arch, batch, ranks, warmup, steps, repeats, threads, isolate, log)
    header = header_lines(rows, arch, batch, ranks, warmup, steps, repeats, command, time.perf_counter() - start,
                          (load, os.getloadavg()[0]), isolate)
    table = markdown(rows, header)
    out = Path(out_dir) / f"step_throughput_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    meta = {"arch": arch, "batch": batch, "ranks": ranks, "machine": machine(),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "open_clip": open_clip.__version__}
    write_csv(out.with_suffix(".csv"), [*rows[0], *meta], [[*row.values(), *meta.values()] for row in rows])
    log(table)
    log(f"wrote {out} and {out.with_suffix('.csv')}")
    return out, rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16", help="an open_clip architecture (random weights)")
    parser.add_argument("--batch", type=int, help="images per step (default: 32 on CUDA, 8 on CPU)")
    parser.add_argument("--ranks", type=int, default=101, help="K, the number of ranks")
    parser.add_argument("--steps", type=int, help="timed steps per configuration and round (CUDA 10, CPU 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (CUDA 3, CPU 1)")
    parser.add_argument("--repeats", type=int, help="round-robin rounds over the configurations (CUDA 3, CPU 1)")
    parser.add_argument("--threads", type=int, help="torch threads per process (CPU 1; CUDA: torch's default)")
    parser.add_argument("--methods", nargs="+", help="trained methods of params.yaml (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one configuration, JSON in and out
    args = parser.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        result = measure_config(Spec(**job.pop("spec")), **job)
        print(MARK + json.dumps(result), flush=True)
        return
    for name in ("batch", "steps", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be at least 0")
    command = " ".join(["python", "benchmarks/step_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    run(args.arch, args.batch, args.ranks, args.steps, args.warmup, args.repeats, args.methods, args.threads,
        command=command, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
