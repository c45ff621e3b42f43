"""Roofline model of the fused ops: the bytes an ideal implementation must move, and the FLOPs it must do.

Why: a measured time alone does not say how far a kernel is from what the hardware allows. The roofline
bound max(bytes / bandwidth, FLOPs / compute) is a time no implementation can beat, so bound / measured
is the share of the device a kernel achieves; where the target GPUs are absent, the bound is the only
figure for them, and it is an estimate (a lower bound), never a measurement. It ignores launch latency
(a few µs per kernel), so bounds under ~10 µs are not reachable in practice.

Bytes: the minimum traffic to and from device memory of an ideal fused implementation. e is the element
size of the logits / features; targets are int64 (8 B); per-row and per-prototype statistics fp32 (4 B).
- loss forward: read the logits B·d·e and the targets 8·B; write the per-row logsumexp 4·B (the loss
  itself is a few partial sums, not counted).
- loss backward: read the logits, the targets and the logsumexp; write the gradient B·d·e.
- head forward: read the features B·D·e and the prototypes K·D·e; write the logits B·K·e and the norms
  4·(B + K).
- head backward: read the features, prototypes, logits, the upstream gradient B·K·e and the norms; write
  ∂features B·D·e and ∂prototypes K·D·e; plus the features read a second time by the ∂prototypes GEMM
  Σ_b g_b·f_b (folding it into the ∂features pass needs a grid-wide reduction of K×D partials).
  Intermediates (g/‖f‖) are not counted: a lower bound may leave them out.
- head+loss (one fused op): the head's traffic, plus the targets read and the logsumexp written forward;
  backward reads the targets and the logsumexp and no upstream gradient of the logits (the loss is what
  is differentiated).
- forward+backward = forward + backward: the backward starts once the loss is known, so two passes.

FLOPs, in two kinds. Matmul FLOPs run on tensor cores and are priced at the dtype's dense tensor peak
(fp32 inputs at tf32's: the bound of an implementation allowed tf32): head 2·B·K·D forward, 4·B·K·D
backward (∂f = g·t̂ and ∂t = gᵀ·f). Elementwise FLOPs run in fp32 on the CUDA cores (an exp counts as
one): the loss 8 per logit forward (weight |c − j|·n: 3, x·w: 1, max: 1, exp(z − m): 2, sum: 1) and 8
backward (z again: 4, exp(z − lse): 2, − onehot and × dz/dx·upstream: 2); the head 2 per feature and
prototype element forward (squared norms) and 3 per logit (s / (‖f‖‖t‖)), backward 3 per logit (g·out,
its sums, g/‖f‖), 4 per feature element (∂f) and 5 per prototype element (t̂ and the ∂t projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

PASSES = ("forward", "backward", "forward+backward")
OPS = ("loss", "head", "head+loss")
TARGET_BYTES, STAT_BYTES = 8, 4  # int64 targets; fp32 norms and logsumexp
LOSS_FWD_FLOPS, LOSS_BWD_FLOPS = 8, 8  # per logit, see the module docstring
ESTIMATE_LABEL = "estimates: roofline lower bounds, not measurements"


@dataclass(frozen=True)
class Cost:
    """Bytes moved and FLOPs done by one pass; `matmul_flops` is the part of `flops` on tensor cores."""

    bytes: int
    flops: int
    matmul_flops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.flops + other.flops, self.matmul_flops + other.matmul_flops)


@dataclass(frozen=True)
class Peak:
    """A device's limits: bandwidth in bytes/s, dense tensor-core FLOP/s by input dtype name ("fp32"
    meaning tf32), fp32 FLOP/s on the CUDA cores. No compute figures: memory bound only."""

    name: str
    bandwidth: float
    tensor: Mapping[str, float] = field(default_factory=dict)
    vector: Optional[float] = None


T = 1e12
# Vendor datasheet figures, dense (the datasheets quote tensor FLOP/s with 2:4 sparsity, twice these).
PEAKS = {
    "H100": Peak("H100 SXM", 3.35 * T, {"bf16": 989 * T, "fp16": 989 * T, "fp32": 494.5 * T}, 66.9 * T),
    "H200": Peak("H200 SXM", 4.8 * T, {"bf16": 989 * T, "fp16": 989 * T, "fp32": 494.5 * T}, 66.9 * T),
    "A100": Peak("A100 SXM 80GB", 2.039 * T, {"bf16": 312 * T, "fp16": 312 * T, "fp32": 156 * T}, 19.5 * T),
}


def device_peak(device_name: str, measured_bandwidth_gbs: float) -> Peak:
    """The datasheet peaks of a GPU named like `torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3"),
    matched by "H100" / "H200" / "A100" (PCIe and 40 GB variants get the SXM figures, which are higher:
    their shares then read low); any other device gets its measured copy bandwidth and no compute peak."""
    for key, peak in PEAKS.items():
        if key in device_name:
            return peak
    return Peak(f"{device_name} (measured copy bandwidth)", measured_bandwidth_gbs * 1e9)


def _head(rows: int, width: int, protos: int, e: int, with_loss: bool) -> dict[str, Cost]:
    features, prototypes, logits = rows * width, protos * width, rows * protos
    norms = STAT_BYTES * (rows + protos)
    loss_fwd = (TARGET_BYTES + STAT_BYTES) * rows if with_loss else 0  # targets in, logsumexp out
    fwd_bytes = (features + prototypes + logits) * e + norms + loss_fwd
    upstream = 0 if with_loss else logits  # the fused op differentiates the loss, not the logits
    bwd_bytes = ((3 * features + 2 * prototypes + logits + upstream) * e + norms
                 + ((TARGET_BYTES + STAT_BYTES) * rows if with_loss else 0))
    fwd_elem = 2 * (features + prototypes) + 3 * logits + (LOSS_FWD_FLOPS * logits if with_loss else 0)
    bwd_elem = 3 * logits + 4 * features + 5 * prototypes + (LOSS_BWD_FLOPS * logits if with_loss else 0)
    fwd_mm, bwd_mm = 2 * logits * width, 4 * logits * width
    return {"forward": Cost(fwd_bytes, fwd_mm + fwd_elem, fwd_mm),
            "backward": Cost(bwd_bytes, bwd_mm + bwd_elem, bwd_mm)}


def costs(op: str, rows: int, width: int, protos: int, element_size: int) -> dict[str, Cost]:
    """The Cost of each pass of `op` ("loss": B × d logits, `protos` unused; "head" and "head+loss": B × D
    features against K × D prototypes) for inputs of `element_size` bytes."""
    if op == "loss":
        logits = rows * width
        fwd = Cost(logits * element_size + (TARGET_BYTES + STAT_BYTES) * rows, LOSS_FWD_FLOPS * logits)
        bwd = Cost(2 * logits * element_size + (TARGET_BYTES + STAT_BYTES) * rows, LOSS_BWD_FLOPS * logits)
        passes = {"forward": fwd, "backward": bwd}
    elif op in ("head", "head+loss"):
        passes = _head(rows, width, protos, element_size, op == "head+loss")
    else:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got '{op}'")
    return {**passes, "forward+backward": passes["forward"] + passes["backward"]}


def memory_ms(cost: Cost, peak: Peak) -> float:
    return cost.bytes / peak.bandwidth * 1e3


def compute_ms(cost: Cost, peak: Peak, dtype: str) -> Optional[float]:
    """Milliseconds the FLOPs take at peak (tensor-core matmuls plus fp32 elementwise); None without
    compute figures for this device and dtype."""
    if peak.vector is None or dtype not in peak.tensor:
        return None
    return (cost.matmul_flops / peak.tensor[dtype] + (cost.flops - cost.matmul_flops) / peak.vector) * 1e3


def estimate_ms(cost: Cost, peak: Peak, dtype: str) -> float:
    """The roofline bound: max(bytes / bandwidth, FLOPs / compute for `dtype` ("fp32", "bf16", "fp16"))."""
    return max(memory_ms(cost, peak), compute_ms(cost, peak, dtype) or 0.0)


def bound(cost: Cost, peak: Peak, dtype: str) -> str:
    """Which roof limits the pass: "memory" or "compute"."""
    return "compute" if (compute_ms(cost, peak, dtype) or 0.0) > memory_ms(cost, peak) else "memory"


def achieved(cost: Cost, ms: float, peak: Peak, dtype: str) -> tuple[float, Optional[float]]:
    """(share of the bandwidth, share of the compute) a pass measured at `ms` achieves: the time each
    roof alone would allow over the measured time (None: no compute peak known)."""
    compute = compute_ms(cost, peak, dtype)
    return memory_ms(cost, peak) / ms, None if compute is None else compute / ms
