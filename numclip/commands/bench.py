"""`numclip bench`: time every implementation of the fused ops: forward, backward, forward+backward.

Loss: the released per-sample loop, vectorised eager, torch.compile, Triton. Head: eager, compile,
Triton. On CUDA the timer is `triton.testing.do_bench` (median, p20, p80); on CPU a wall-clock timer
with the same quantiles, and only the implementations that run there. Rows go to a CSV with the
device, versions and date; a PNG plot is drawn from it.
"""

from __future__ import annotations

import datetime
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from numclip.core.atomic import atomic_path, write_csv
from numclip.kernels import cosine_logits, ranking_weighted_cross_entropy
from numclip.kernels.dispatch import triton_available
from numclip.kernels.released import released_ce_dis_loss

PASSES = ("forward", "backward", "forward+backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 1.0) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return tuple(do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100))
    fn()  # warm-up (and compilation)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - start < budget_s and len(samples) < 50):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return tuple(float(np.percentile(samples, q)) for q in (50, 20, 80))


def memory_bandwidth_gbs(device: torch.device) -> float:
    """Measured copy bandwidth (read + write) of this device, the roofline the kernels are held to."""
    n = (256 if device.type == "cuda" else 32) * 2**20
    x, y = torch.empty(n, device=device), torch.empty(n, device=device)
    median, _, _ = time_ms(lambda: y.copy_(x), device)
    return 2 * n * 4 / (median * 1e-3) / 1e9


def _loss_fn(impl: str, d: int) -> Callable:
    if impl == "released":
        return lambda x, y: released_ce_dis_loss(x, y, d)
    return lambda x, y: ranking_weighted_cross_entropy(x, y, mode="faithful", impl=impl)


def _timed(run_forward: Callable[[bool], torch.Tensor], inputs: list[torch.Tensor], step: str) -> Callable:
    if step == "forward":
        return lambda: run_forward(False)
    if step == "backward":
        out = run_forward(True)
        upstream = torch.ones_like(out)
        return lambda: torch.autograd.grad(out, inputs, upstream, retain_graph=True)

    def forward_backward():
        out = run_forward(True)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))
    return forward_backward


def loss_cases(impl: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device):
    logits = torch.randn(rows, cols, device=device, dtype=dtype) * 3
    target = torch.randint(0, cols, (rows,), device=device)
    fn = _loss_fn(impl, cols)
    x = logits.clone().requires_grad_()

    def forward(with_grad: bool) -> torch.Tensor:
        return fn(x if with_grad else logits, target)

    element = logits.element_size()
    moved = {"forward": rows * cols * element + rows * 8,
             "backward": 2 * rows * cols * element,
             "forward+backward": 2 * rows * cols * element + rows * 8}
    return {step: (_timed(forward, [x], step), moved[step]) for step in PASSES}


def head_cases(impl: str, rows: int, width: int, protos: int, dtype: torch.dtype, device: torch.device):
    f = torch.randn(rows, width, device=device, dtype=dtype)
    t = torch.randn(protos, width, device=device, dtype=dtype)
    scale = torch.tensor(100.0, device=device)
    inputs = [f.clone().requires_grad_(), t.clone().requires_grad_(), scale.clone().requires_grad_()]

    def forward(with_grad: bool) -> torch.Tensor:
        return cosine_logits(*(inputs if with_grad else (f, t, scale)), impl=impl)

    element = f.element_size()
    fwd = (rows * width + protos * width + rows * protos) * element
    moved = {"forward": fwd, "backward": (3 * rows * width + 3 * protos * width + 2 * rows * protos) * element - fwd,
             "forward+backward": (3 * rows * width + 3 * protos * width + 2 * rows * protos) * element}
    return {step: (_timed(forward, inputs, step), moved[step]) for step in PASSES}


def grid(device: torch.device, quick: bool):
    """(op, impl, B, d or D, K, dtype name) to run on this device."""
    on_gpu = device.type == "cuda"
    batches = [256, 4096] if quick else [256, 4096, 65536]
    impls = ["torch", "compile"] + (["triton"] if on_gpu and triton_available() else [])
    for dtype in DTYPES:
        for rows in batches:
            for cols in [5, 101, 1000]:
                for impl in (["released"] if rows == 256 else []) + impls:
                    yield "loss", impl, rows, cols, 0, dtype
            for width in [512, 768]:
                for protos in [5, 101]:
                    for impl in impls:
                        yield "head", impl, rows, width, protos, dtype


def run(out_dir: str | Path = "benchmarks/results", quick: Optional[bool] = None,
        log: Callable[[str], None] = print) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = device.type == "cpu" if quick is None else quick
    # backward alone is timed by replaying it on one graph (retain_graph), which compiled graphs
    # refuse while they donate their buffers
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({cpu})"
    bandwidth = memory_bandwidth_gbs(device)
    log(f"{name}: measured copy bandwidth {bandwidth:.1f} GB/s")
    meta = {"device": name, "torch": torch.__version__, "triton": _triton_version(),
            "date": datetime.date.today().isoformat(), "device_bandwidth_gbs": round(bandwidth, 1)}
    rows = []
    for op, impl, batch, width, protos, dtype_name in grid(device, quick):
        dtype = DTYPES[dtype_name]
        cases = (loss_cases(impl, batch, width, dtype, device) if op == "loss"
                 else head_cases(impl, batch, width, protos, dtype, device))
        for step, (fn, moved) in cases.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            median, p20, p80 = time_ms(fn, device)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
            gbs = moved / (median * 1e-3) / 1e9
            rows.append({"op": op, "impl": impl, "pass": step, "B": batch, "d_or_D": width, "K": protos or "",
                         "dtype": dtype_name, "median_ms": round(median, 4), "p20_ms": round(p20, 4),
                         "p80_ms": round(p80, 4), "peak_mem_mib": "" if peak is None else round(peak, 1),
                         "gbps": round(gbs, 2), "bandwidth_share": round(gbs / bandwidth, 3), **meta})
        log(f"{op} {impl:8s} B={batch:<6d} {'d' if op == 'loss' else 'D'}={width:<5d}"
            f"{f' K={protos}' if protos else ''} {dtype_name}: fwd+bwd {rows[-1]['median_ms']:.3f} ms")
    out = Path(out_dir) / f"kernels_{device.type}.csv"
    write_csv(out, list(rows[0]), [list(r.values()) for r in rows])
    plot(rows, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    cases = sorted({(r["op"], r["d_or_D"], r["K"], r["dtype"]) for r in rows})
    fig = Figure(figsize=(4 * min(len(cases), 4), 3.2 * ((len(cases) + 3) // 4)), layout="constrained")
    axes = fig.subplots((len(cases) + 3) // 4, min(len(cases), 4), squeeze=False).ravel()
    for ax, (op, width, protos, dtype) in zip(axes, cases):
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r["B"], r["median_ms"]) for r in rows if (r["op"], r["d_or_D"], r["K"], r["dtype"], r["impl"],
                                                                     r["pass"]) == (op, width, protos, dtype, impl,
                                                                                    "forward+backward"))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        ax.set(xscale="log", yscale="log", xlabel="B", ylabel="fwd+bwd ms",
               title=f"{op} {'d' if op == 'loss' else 'D'}={width}{f' K={protos}' if protos else ''} {dtype}")
        ax.legend(fontsize=7)
    for ax in axes[len(cases):]:
        ax.set_visible(False)
    with atomic_path(path) as tmp:  # the temporary's suffix is not .png: name the format
        fig.savefig(tmp, format="png", dpi=90)


def _triton_version() -> str:
    if not triton_available():
        return "none"
    import triton

    return triton.__version__
