"""`numclip bench`: time every implementation of the fused ops: forward, backward, forward+backward.

Loss: the released per-sample loop, vectorised eager, torch.compile, Triton. Head, and head+loss (the
fused op against the eager chain): eager, compile, Triton. On CUDA the timer is `triton.testing.do_bench`
(median, p20, p80); on CPU a wall-clock timer with the same quantiles, and only the implementations that
run there. Rows go to a CSV with the device, versions and date; a PNG plot is drawn from it.

Every case is held to the roofline model (`numclip.kernels.roofline`): its bytes and FLOPs, and the
estimated H100 / H200 times, printed as what they are, lower bounds, not measurements; on a GPU also the
achieved share of the device's bandwidth and compute. `--model` prints the model of the target cases
alone, timing nothing.
"""

from __future__ import annotations

import datetime
import platform
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from numclip.commands.bench_cases import DTYPES, build, grid
from numclip.core.atomic import atomic_path, write_csv
from numclip.kernels import MEASURED
from numclip.kernels.dispatch import triton_version
from numclip.kernels.roofline import ESTIMATE_LABEL, PEAKS, Peak, achieved, bound, costs, device_peak, estimate_ms

TARGET_CASES = ([("loss", 65536, d, 0, dtype) for dtype in ("fp32", "bf16") for d in (5, 101, 1000)]
                + [(op, 65536, width, 101, "bf16") for op in ("head", "head+loss") for width in (512, 768)])


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


def memory_bandwidth_gbs(device: torch.device, budget_s: float = 1.0) -> float:
    """Measured copy bandwidth (read + write) of this device: the roofline of a GPU with no datasheet entry."""
    n = (256 if device.type == "cuda" else 32) * 2**20
    x, y = torch.empty(n, device=device), torch.empty(n, device=device)
    median, _, _ = time_ms(lambda: y.copy_(x), device, budget_s)
    return 2 * n * 4 / (median * 1e-3) / 1e9


def run(out_dir: str | Path = "benchmarks/results", quick: Optional[bool] = None,
        log: Callable[[str], None] = print, cases: Optional[Iterable[tuple]] = None, budget_s: float = 1.0) -> Path:
    """Time `cases` ((op, impl, B, d or D, K, dtype name); default: the grid) and write the CSV and PNG."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = device.type == "cpu" if quick is None else quick
    # backward alone is timed by replaying it on one graph (retain_graph), which compiled graphs
    # refuse while they donate their buffers
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({cpu})"
    bandwidth = memory_bandwidth_gbs(device, budget_s)
    log(f"{name}: measured copy bandwidth {bandwidth:.1f} GB/s")
    peak = device_peak(name, bandwidth) if device.type == "cuda" else None
    if peak is not None:
        log(f"roofline of {describe(peak)}")
    for line in estimate_header():
        log(line)
    meta = {"device": name, "torch": torch.__version__, "triton": triton_version(),
            "date": datetime.date.today().isoformat(), "device_bandwidth_gbs": round(bandwidth, 1)}
    rows = []
    for op, impl, batch, width, protos, dtype_name in (grid(device, quick) if cases is None else cases):
        for step, (fn, cost) in build(op, impl, batch, width, protos, DTYPES[dtype_name], device).items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            median, p20, p80 = time_ms(fn, device, budget_s)
            peak_mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
            gbs = cost.bytes / (median * 1e-3) / 1e9
            shares = achieved(cost, median, peak, dtype_name) if peak is not None else ("", "")
            rows.append({"op": op, "impl": impl, "pass": step, "B": batch, "d_or_D": width, "K": protos or "",
                         "dtype": dtype_name, "median_ms": round(median, 4), "p20_ms": round(p20, 4),
                         "p80_ms": round(p80, 4), "peak_mem_mib": "" if peak_mem is None else round(peak_mem, 1),
                         "gbps": round(gbs, 2), "bandwidth_share": round(gbs / bandwidth, 3),
                         "bytes": cost.bytes, "flops": cost.flops,
                         "est_h100_ms": _sig(estimate_ms(cost, PEAKS["H100"], dtype_name)),
                         "est_h200_ms": _sig(estimate_ms(cost, PEAKS["H200"], dtype_name)),
                         "roofline_ms": "" if peak is None else _sig(estimate_ms(cost, peak, dtype_name)),
                         "bw_share": _sig(shares[0]), "compute_share": _sig(shares[1]), **meta})
        log(case_line(rows[-1], peak))
    out = Path(out_dir) / f"kernels_{device.type}.csv"
    write_csv(out, list(rows[0]), [list(r.values()) for r in rows])
    plot(rows, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')}")
    for line in choice_lines(MEASURED.table()):
        log(line)
    return out


def describe(peak: Peak) -> str:
    compute = ", ".join(f"{'tf32' if k == 'fp32' else k} {v / 1e12:g}" for k, v in peak.tensor.items())
    if peak.vector is not None:
        compute += f", fp32 {peak.vector / 1e12:g} TFLOP/s"
    return f"{peak.name} ({peak.bandwidth / 1e12:.4g} TB/s{'; ' + compute if compute else ', no compute peak'})"


def _sig(value: Optional[float | str]) -> float | str:
    """Four significant digits for the CSV ("" where there is no figure)."""
    return "" if value is None or isinstance(value, str) else float(f"{value:.4g}")


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def case_line(row: dict, peak: Optional[Peak]) -> str:
    """One case's printed line: its measured fwd+bwd time beside the model (bytes, FLOPs) and, on CPU, the
    estimated H100 / H200 times, on a GPU the achieved shares of this device's roofline."""
    protos = f" K={row['K']}" if row["K"] else ""
    width = f"{'d' if row['op'] == 'loss' else 'D'}={row['d_or_D']:<5d}{protos}"
    case = f"{row['op']:9s} {row['impl']:8s} B={row['B']:<6d} {width} {row['dtype']}"
    model = f"{_si(row['bytes'], 'B')}, {_si(row['flops'], 'FLOP')}"
    if peak is None:
        fit = f"est. H100 {row['est_h100_ms'] * 1e3:.3g} µs, est. H200 {row['est_h200_ms'] * 1e3:.3g} µs"
    else:
        compute = "no compute peak" if row["compute_share"] in ("", None) else f"{row['compute_share']:.1%} of compute"
        fit = f"roofline {row['roofline_ms'] * 1e3:.3g} µs: {row['bw_share']:.1%} of bandwidth, {compute}"
    return f"{case}: fwd+bwd {row['median_ms']:.3f} ms | model {model}; {fit}"


def choice_lines(table: dict[str, dict]) -> list[str]:
    """The `impl="auto"` (and launch-configuration) choices remembered so far, one line each."""
    if not table:
        return []
    lines = [f"impl='auto' choices ({len(table)}, timed on first use and cached):"]
    for key, entry in sorted(table.items()):
        times = ", ".join(f"{name} {ms:.4g} ms" for name, ms in entry.get("ms", {}).items())
        lines.append(f"  {key} -> {entry.get('choice')} ({times})")
    return lines


def model_rows(cases: Iterable[tuple] = TARGET_CASES) -> list[dict]:
    """The roofline model of (op, B, d or D, K, dtype name) cases, every pass: what `--model` prints ("bound":
    the roof that limits it, on H100 / H200 where they differ)."""
    rows = []
    for op, batch, width, protos, dtype in cases:
        for step, cost in costs(op, batch, width, protos, DTYPES[dtype].itemsize).items():
            rows.append({"op": op, "pass": step, "B": batch, "d or D": width, "K": protos or "", "dtype": dtype,
                         "MB": f"{cost.bytes / 1e6:.4g}", "GFLOP": f"{cost.flops / 1e9:.4g}",
                         "bound": " / ".join(dict.fromkeys(bound(cost, PEAKS[key], dtype) for key in ("H100", "H200"))),
                         "est. H100 µs": f"{estimate_ms(cost, PEAKS['H100'], dtype) * 1e3:.3g}",
                         "est. H200 µs": f"{estimate_ms(cost, PEAKS['H200'], dtype) * 1e3:.3g}"})
    return rows


def model_markdown(cases: Iterable[tuple] = TARGET_CASES) -> str:
    """`model_rows` as a Markdown table, columns padded so that it also reads as plain text."""
    rows = model_rows(cases)
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    numeric = {"B", "d or D", "K", "MB", "GFLOP", "est. H100 µs", "est. H200 µs"}

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [line(c.ljust(widths[c]) for c in columns),
           line(("-" * (widths[c] - 1) + ":") if c in numeric else "-" * widths[c] for c in columns)]
    out += [line(str(r[c]).rjust(widths[c]) if c in numeric else str(r[c]).ljust(widths[c]) for c in columns)
            for r in rows]
    return "\n".join(out)


def estimate_header() -> list[str]:
    """What the estimates are, and the peaks they use: printed before any of them."""
    return [f"{ESTIMATE_LABEL} (est. = max(bytes / bandwidth, FLOPs / compute); datasheet, dense):",
            *(f"  {describe(PEAKS[key])}" for key in ("H100", "H200"))]


def print_model(log: Callable[[str], None] = print) -> None:
    """`numclip bench --model`: the target cases' roofline model, timing nothing."""
    for line in estimate_header():
        log(line)
    log(model_markdown())


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

