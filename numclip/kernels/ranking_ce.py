"""Fused NumCLIP ranking-weighted cross-entropy (Triton), beside its PyTorch reference.

Forward: each program takes a [ROWS × BLOCK_D] tile (many short rows, or a few long ones), reads every
logit once, and keeps only the per-row logsumexp; the weights W_ij = |c - j| / S(c) · (d - 1) come from
the closed form S(c) = c(c+1)/2 + (d-1-c)(d-c)/2 and never exist in memory; a program writes one
partial sum (and count), so the reduction is deterministic. Backward: the gradient is recomputed from
the saved logits and logsumexp, with the upstream gradient folded in before the one rounding to the
logits' dtype (no fp16 underflow at large B, no double rounding in bf16).

Targets: -100 is ignored, as in `F.cross_entropy` (no loss, no gradient, not counted by "mean"). On CPU
any other out-of-range target is a `ValueError`; on CUDA, where checking would stop the host, the
kernel marks the row's loss and gradient NaN instead (the training loop stops on a non-finite loss).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from numclip.kernels.dispatch import Impl, compiled, on_device, pick, settle
from numclip.losses.ranking import IGNORE_INDEX, Mode, check_inputs, weighted_cross_entropy_unchecked

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch build ships no triton: the PyTorch path still works
    triton = None

Reduction = Literal["mean", "sum", "none"]
MAX_BLOCK_D = 1024  # columns per tile; longer rows loop over tiles with an online logsumexp
TILES = ((1024, 8), (512, 4))  # the autotuner's (rows × columns, warps): 4 logits a thread
MAX_REGISTERS = 128  # an explicit budget: left alone, ptxas caps some 8-warp tiles at 64 and spills


class TileConfig(NamedTuple):
    rows: int
    block_d: int
    num_warps: int

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.block_d}w{self.num_warps}"


def tile_configs(num_cols: int) -> list[TileConfig]:
    """The tiles the launcher may pick for rows of `num_cols` logits, the untimed default first."""
    block_d = min(1 << max(num_cols - 1, 1).bit_length(), MAX_BLOCK_D)
    return [TileConfig(max(1, elements // block_d), block_d, warps) for elements, warps in TILES]


def row_alignment(stride: int, element_size: int) -> int:
    """The widest power of two of elements, up to one 16-byte vector, that `stride` is a multiple of. Of
    gcd(row stride, row length) it is the load width the kernel may assume (its VEC)."""
    vector = 16 // element_size
    alignment = 1
    while alignment < vector and stride % (alignment * 2) == 0:
        alignment *= 2
    return alignment


if triton is not None:

    @triton.jit
    def target_rows(target_ptr, rows, row_mask, n_cols, IGNORE: tl.constexpr):
        """Per row: (valid, ignored, class index c, weight normaliser (d - 1) / S(c))."""
        target = tl.load(target_ptr + rows, mask=row_mask, other=IGNORE)
        ignored = target == IGNORE
        valid = (target >= 0) & (target < n_cols)
        c = tl.where(valid, target, 0).to(tl.int32)
        cf = c.to(tl.float32)
        df = n_cols.to(tl.float32)
        total = cf * (cf + 1.0) * 0.5 + (df - 1.0 - cf) * (df - cf) * 0.5  # S(c) = sum_j |c - j|
        return valid, ignored, c, (df - 1.0) / total

    @triton.jit
    def weighted_logits(x, cols, c, norm, margin, FIXED: tl.constexpr):
        """(z, dz/dx, is-true-class) of a [rows, cols] tile: z = x·W (faithful) or x + margin·(W - 1)."""
        is_c = cols[None, :] == c[:, None]
        w = tl.where(is_c, 1.0, tl.abs(c[:, None].to(tl.float32) - cols[None, :].to(tl.float32)) * norm[:, None])
        if FIXED:
            return x + margin * (w - 1.0), tl.full(x.shape, 1.0, tl.float32), is_c
        return x * w, w, is_c

    @triton.jit
    def row_upstream(up_ptr, up_stride, rows, row_mask, valid, ignored):
        """The upstream gradient of each row's loss: 0 where ignored, NaN where the target is out of range."""
        up = tl.load(up_ptr + rows * up_stride, mask=row_mask, other=0.0).to(tl.float32)
        return tl.where(valid, up, tl.where(ignored, 0.0, float("nan")))

    @triton.jit
    def _ranking_ce_fwd_kernel(logits_ptr, stride_vec, target_ptr, lse_ptr, loss_ptr, partial_ptr, n_rows, n_cols_vec,
                               margin, FIXED: tl.constexpr, PER_ROW: tl.constexpr, IGNORE: tl.constexpr,
                               ROWS: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
        pid = tl.program_id(0)
        stride, n_cols = stride_vec * VEC, n_cols_vec * VEC  # known multiples of VEC: VEC-wide loads
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        valid, ignored, c, norm = target_rows(target_ptr, rows, row_mask, n_cols, IGNORE)
        starts = rows.to(tl.int64) * stride
        running_max = tl.full((ROWS,), float("-inf"), tl.float32)
        running_sum = tl.zeros((ROWS,), tl.float32)
        true_logit = tl.zeros((ROWS,), tl.float32)
        for start in range(0, n_cols, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = row_mask[:, None] & (cols[None, :] < n_cols)
            x = tl.load(logits_ptr + starts[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            z, _, is_c = weighted_logits(x, cols, c, norm, margin, FIXED)
            z = tl.where(mask, z, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(z, axis=1))
            new_max = tl.where(row_mask, new_max, 0.0)  # padding rows stay finite
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
            running_max = new_max
            true_logit += tl.sum(tl.where(is_c & mask, x, 0.0), axis=1)  # the true class's weight is 1
        lse = running_max + tl.log(tl.where(row_mask, running_sum, 1.0))
        loss = tl.where(valid, lse - true_logit, tl.where(ignored, 0.0, float("nan")))
        tl.store(lse_ptr + rows, lse, mask=row_mask)
        if PER_ROW:
            tl.store(loss_ptr + rows, loss, mask=row_mask)
        else:
            tl.store(partial_ptr + 2 * pid, tl.sum(tl.where(row_mask, loss, 0.0), axis=0))
            tl.store(partial_ptr + 2 * pid + 1, tl.sum(tl.where(row_mask & ~ignored, 1.0, 0.0), axis=0))

    @triton.jit
    def _ranking_ce_bwd_kernel(logits_ptr, stride_vec, target_ptr, lse_ptr, up_ptr, up_stride, grad_ptr, n_rows,
                               n_cols_vec,
                               margin, FIXED: tl.constexpr, IGNORE: tl.constexpr, ROWS: tl.constexpr,
                               BLOCK_D: tl.constexpr, VEC: tl.constexpr):
        pid = tl.program_id(0)
        stride, n_cols = stride_vec * VEC, n_cols_vec * VEC
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        valid, ignored, c, norm = target_rows(target_ptr, rows, row_mask, n_cols, IGNORE)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        up = row_upstream(up_ptr, up_stride, rows, row_mask, valid, ignored)
        starts = rows.to(tl.int64) * stride
        for start in range(0, n_cols, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = row_mask[:, None] & (cols[None, :] < n_cols)
            offsets = starts[:, None] + cols[None, :]
            x = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            z, dz_dx, is_c = weighted_logits(x, cols, c, norm, margin, FIXED)
            g = (tl.exp(z - lse[:, None]) - tl.where(is_c, 1.0, 0.0)) * dz_dx * up[:, None]
            tl.store(grad_ptr + offsets, g.to(grad_ptr.dtype.element_ty), mask=mask)


def vector_width(logits: Tensor) -> int:
    """The kernels' VEC: the row stride and the row length are passed divided by it, so that the
    compiler knows both are multiples of it and may load VEC logits at once."""
    return row_alignment(math.gcd(logits.stride(0), logits.shape[1]), logits.element_size())


def _launch(kernel, logits: Tensor, config: TileConfig, vec: int, *args, **constexprs) -> None:
    grid = (triton.cdiv(logits.shape[0], config.rows),)
    with on_device(logits):
        kernel[grid](*args, ROWS=config.rows, BLOCK_D=config.block_d, VEC=vec, num_warps=config.num_warps,
                     maxnreg=MAX_REGISTERS, **constexprs)


def _tuned(op: str, logits: Tensor, run: Callable[[TileConfig], Tensor]) -> TileConfig:
    """The fastest tile for this shape (timed once on CUDA; the default under the interpreter)."""
    return pick(op, logits, tile_configs(logits.shape[1]), run)


@torch.library.custom_op("numclip::ranking_ce_forward", mutates_args=())
def ranking_ce_forward(logits: Tensor, target: Tensor, fixed: bool, margin: float,
                       per_row: bool) -> tuple[Tensor, Tensor]:
    """(per-row losses [B], or (sum, count) [2]; logsumexp per row [B]), all float32."""
    rows, cols = logits.shape
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return (lse.new_empty(0) if per_row else lse.new_zeros(2)), lse

    def run(config: TileConfig) -> Tensor:
        programs = triton.cdiv(rows, config.rows)
        loss = torch.empty(rows if per_row else 2 * programs, dtype=torch.float32, device=logits.device)
        vec = vector_width(logits)
        _launch(_ranking_ce_fwd_kernel, logits, config, vec, logits, logits.stride(0) // vec, target, lse, loss, loss,
                rows, cols // vec, margin, FIXED=fixed, PER_ROW=per_row, IGNORE=IGNORE_INDEX)
        return loss if per_row else loss.view(programs, 2).sum(0)

    return run(_tuned("ranking_ce_forward", logits, run)), lse


@ranking_ce_forward.register_fake
def _(logits, target, fixed, margin, per_row):
    return logits.new_empty(logits.shape[0] if per_row else 2, dtype=torch.float32), \
        logits.new_empty(logits.shape[0], dtype=torch.float32)


@torch.library.custom_op("numclip::ranking_ce_backward", mutates_args=())
def ranking_ce_backward(logits: Tensor, target: Tensor, lse: Tensor, upstream: Tensor, fixed: bool,
                        margin: float) -> Tensor:
    """∂loss/∂logits with the upstream gradient (per row [B], or one value [1]) folded in."""
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    rows, cols = logits.shape
    if rows == 0:
        return grad
    up_stride = 0 if upstream.numel() == 1 else 1

    def run(config: TileConfig) -> Tensor:
        vec = vector_width(logits)
        _launch(_ranking_ce_bwd_kernel, logits, config, vec, logits, logits.stride(0) // vec, target, lse, upstream,
                up_stride, grad, rows, cols // vec, margin, FIXED=fixed, IGNORE=IGNORE_INDEX)
        return grad

    return run(_tuned("ranking_ce_backward", logits, run))


@ranking_ce_backward.register_fake
def _(logits, target, lse, upstream, fixed, margin):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    logits, target, fixed, margin, per_row = inputs
    ctx.save_for_backward(logits, target, output[1])
    ctx.fixed, ctx.margin, ctx.per_row = fixed, margin, per_row


def _backward(ctx, grad_loss: Tensor, _grad_lse: Tensor):
    logits, target, lse = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    upstream = grad_loss if ctx.per_row else grad_loss[:1]  # d(sum)/d(loss) reaches the partial sum only
    grad = ranking_ce_backward(logits, target, lse, upstream.float().contiguous(), ctx.fixed, ctx.margin)
    return grad, None, None, None, None


ranking_ce_forward.register_autograd(_backward, setup_context=_setup_context)


def reduce_loss(totals_or_rows: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """The requested reduction of the forward's output, in the logits' dtype ("mean" divides by the rows
    not ignored, as `F.cross_entropy` does: NaN when there are none)."""
    if reduction == "none":
        return totals_or_rows.to(dtype)
    if reduction == "sum":
        return totals_or_rows[0].to(dtype)
    return (totals_or_rows[0] / totals_or_rows[1]).to(dtype)


def triton_ranking_ce(logits: Tensor, target: Tensor, fixed: bool, margin: float, reduction: str) -> Tensor:
    logits = logits.contiguous()  # the backward writes its gradient with the logits' row stride
    out, _ = ranking_ce_forward(logits, target.contiguous(), fixed, float(margin), reduction == "none")
    return reduce_loss(out, reduction, logits.dtype)


def ranking_weighted_cross_entropy(logits: Tensor, target: Tensor, *, mode: Mode = "faithful",
                                   reduction: Reduction = "mean", margin: float = 1.0,
                                   impl: Impl = "auto") -> Tensor:
    """NumCLIP's ranking-weighted CE (`numclip.losses.ranking`), fused on GPU. Same values and gradients."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got '{reduction}'")
    check_inputs(logits, target, mode, ignore_index=True, host_checks=not torch.compiler.is_compiling())
    chosen = settle(impl, "ranking_weighted_cross_entropy", (logits,), (target,), {
        "triton": lambda x: triton_ranking_ce(x, target, mode == "fixed", margin, reduction),
        "torch": lambda x: weighted_cross_entropy_unchecked(x, target, mode, margin, reduction)})
    if chosen == "triton":
        return triton_ranking_ce(logits, target, mode == "fixed", margin, reduction)
    fn = compiled(weighted_cross_entropy_unchecked) if chosen == "compile" else weighted_cross_entropy_unchecked
    return fn(logits, target, mode, margin, reduction)
