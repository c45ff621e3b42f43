"""Fused NumCLIP ranking-weighted cross-entropy (Triton), beside its PyTorch reference.

One program per row: the weights W_ij = |c - j| / S(c) · (d - 1) come from the closed form
S(c) = c(c+1)/2 + (d-1-c)(d-c)/2 and are never materialised; the logsumexp is online in fp32; the
gradient is written during the forward pass (Liger-style), so backward is one multiply by the
upstream gradient.
"""

from __future__ import annotations

from typing import Literal

import torch

from numclip.kernels.dispatch import Impl, compiled, resolve
from numclip.losses.ranking import Mode, check_inputs, weighted_cross_entropy_unchecked
from numclip.losses.ranking import ranking_weighted_cross_entropy as reference

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch build ships no triton: the PyTorch path still works
    triton = None

Reduction = Literal["mean", "sum", "none"]
MAX_BLOCK = 4096

if triton is not None:

    @triton.jit
    def _weighted_block(row_ptr, start, n_cols, c, cf, norm, margin, FIXED: tl.constexpr, BLOCK: tl.constexpr):
        """One block of a row: columns, mask, weights W and weighted logits z (-inf past the row's end)."""
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.where(cols == c, 1.0, tl.abs(cf - cols.to(tl.float32)) * norm)
        if FIXED:
            z = x + margin * (w - 1.0)
        else:
            z = x * w
        return cols, mask, w, tl.where(mask, z, float("-inf"))

    @triton.jit
    def _ranking_ce_kernel(logits_ptr, logits_stride, target_ptr, loss_ptr, grad_ptr, grad_stride,
                           n_cols, grad_scale, margin,
                           FIXED: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * logits_stride
        c = tl.load(target_ptr + row).to(tl.int32)
        cf = c.to(tl.float32)
        df = n_cols.to(tl.float32)
        total = cf * (cf + 1.0) * 0.5 + (df - 1.0 - cf) * (df - cf) * 0.5  # S(c) = sum_j |c - j|
        norm = (df - 1.0) / total

        running_max = float("-inf")
        running_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            cols, mask, w, z = _weighted_block(row_ptr, start, n_cols, c, cf, norm, margin, FIXED, BLOCK)
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        x_c = tl.load(row_ptr + c).to(tl.float32)  # the true class's weight is 1 in both modes
        tl.store(loss_ptr + row, lse - x_c)

        if COMPUTE_GRAD:
            grad_row = grad_ptr + row * grad_stride
            for start in range(0, n_cols, BLOCK):
                cols, mask, w, z = _weighted_block(row_ptr, start, n_cols, c, cf, norm, margin, FIXED, BLOCK)
                dz_dx = 1.0 if FIXED else w  # d(weighted logit)/d(logit)
                g = (tl.exp(z - lse) - tl.where(cols == c, 1.0, 0.0)) * dz_dx * grad_scale
                tl.store(grad_row + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _check_target(logits: torch.Tensor, target: torch.Tensor, mode: str) -> None:
    """The reference's checks; on CUDA the range check is an asynchronous device assert (no host sync),
    which the kernel needs because an out-of-range target would index outside the row."""
    check_inputs(logits, target, mode)
    if target.is_cuda:
        in_range = (target >= 0).all() & (target < logits.shape[1]).all()
        torch._assert_async(in_range, "ranking_weighted_cross_entropy: target out of [0, d)")


class RankingCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, fixed: bool, margin: float,
                reduction: str) -> torch.Tensor:
        rows, cols = logits.shape
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        target = target.contiguous()
        loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
        compute_grad = logits.requires_grad
        grad = torch.empty_like(logits) if compute_grad else loss
        scale = 1.0 / rows if reduction == "mean" else 1.0
        block = min(triton.next_power_of_2(cols), MAX_BLOCK)
        _ranking_ce_kernel[(rows,)](logits, logits.stride(0), target, loss, grad,
                                    grad.stride(0) if compute_grad else 0, cols, scale, float(margin),
                                    FIXED=fixed, COMPUTE_GRAD=compute_grad, BLOCK=block,
                                    num_warps=4 if block <= 1024 else 8)
        ctx.reduction = reduction
        ctx.save_for_backward(grad if compute_grad else None)
        if reduction == "none":
            return loss.to(logits.dtype)
        return (loss.sum() * scale).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        upstream = grad_output[:, None] if ctx.reduction == "none" else grad_output
        return (grad.float() * upstream.float()).to(grad.dtype), None, None, None, None


def ranking_weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, mode: Mode = "faithful",
                                   reduction: Reduction = "mean", margin: float = 1.0,
                                   impl: Impl = "auto") -> torch.Tensor:
    """NumCLIP's ranking-weighted CE (`numclip.losses.ranking`), fused on GPU. Same values and gradients."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got '{reduction}'")
    chosen = resolve(impl, logits, target)
    if chosen == "triton":
        _check_target(logits, target, mode)
        return RankingCrossEntropyFunction.apply(logits, target, mode == "fixed", margin, reduction)
    if chosen == "compile":
        check_inputs(logits, target, mode)
        return compiled(weighted_cross_entropy_unchecked)(logits, target, mode, margin, reduction)
    return reference(logits, target, mode, margin, reduction)
