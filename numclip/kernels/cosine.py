"""Fused cosine-similarity head (Triton), alone or fused with the ranking cross-entropy.

Forward: one program per B-tile covers every prototype (K ≤ 128) in one tile, so the features are read
once; it accumulates f·t and both squared norms over D and never writes normalised copies. With a
target it goes on, in registers, to the ranking cross-entropy of the logits it just rounded to the
output dtype (the logits are still returned: other loss terms read them).

Backward (Triton, deterministic): since f̂·∂f̂ = Σₖ gₖ·outₖ =: r, ∂f = (s·g·t̂ − r·f̂)/‖f‖ reads f and
g once and writes ∂f once; the same pass writes g/‖f‖ and per-tile column sums c = Σ_b g·out, so that
∂t = (s·(g/‖f‖)ᵀf − c·t̂)/‖t‖ is one GEMM and a small projection, and ∂s = Σ r / s. The fused op folds
the cross-entropy's gradient into g inside the same pass, from the saved logsumexp.

fp32 inputs follow `torch.get_float32_matmul_precision()`: "highest" runs the dots as tf32x3 (fp32
accuracy on tensor cores), "high" and "medium" as tf32.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from numclip.kernels.dispatch import Impl, compiled, on_device, pick, settle
from numclip.kernels.ranking_ce import reduce_loss
from numclip.losses.ranking import IGNORE_INDEX, Mode, check_inputs, weighted_cross_entropy_unchecked

try:
    import triton
    import triton.language as tl

    from numclip.kernels.ranking_ce import row_upstream, target_rows, weighted_logits
except ImportError:
    triton = None

EPS = 1e-12
MAX_PROTOTYPES = 128  # one register tile of logits per program


class HeadConfig(NamedTuple):
    block_b: int
    block_d: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"b{self.block_b}d{self.block_d}w{self.num_warps}s{self.num_stages}"


LOGIT_TILE = 4096  # logits per program on 8 warps: 16 fp32 accumulators a thread, room for the CE epilogue


def block_k(num_protos: int) -> int:
    return max(16, 1 << max(num_protos - 1, 0).bit_length())


def head_configs(num_protos: int, dtype: torch.dtype) -> list[HeadConfig]:
    """The launch configurations for K prototypes, the untimed default first: a [rows × K] logit tile of
    at most 4096 fp32 accumulators on 8 warps (half of it on 4), at most 64 rows, D in steps of 64 while
    K ≤ 32 and of 32 beyond; fp32, whose tf32x3 dot needs three times the operand registers, takes half
    the rows. Chosen so that no configuration spills on sm_80 or sm_90 (tests/test_kernel_compile.py)."""
    k = block_k(num_protos)
    rows = min(64, LOGIT_TILE // k // (2 if dtype == torch.float32 else 1))
    step = 64 if k <= 32 and dtype != torch.float32 else 32
    return [HeadConfig(rows, step, 8, 2), HeadConfig(max(16, rows // 2), step, 4, 2)]


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot`'s input precision for this dtype (16-bit inputs always use tensor cores)."""
    if dtype != torch.float32:
        return "ieee"
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def cosine_logits_reference(features: Tensor, prototypes: Tensor, logit_scale: Tensor | float) -> Tensor:
    """s * normalize(features) @ normalize(prototypes).T, in the inputs' dtype."""
    return logit_scale * F.normalize(features, dim=-1, eps=EPS) @ F.normalize(prototypes, dim=-1, eps=EPS).T


def cosine_ranking_reference(features: Tensor, prototypes: Tensor, logit_scale: Tensor | float, target: Tensor,
                             mode: Mode, margin: float) -> tuple[Tensor, Tensor]:
    """The eager chain the fused op replaces: the head, then the ranking CE of its logits in float32."""
    logits = cosine_logits_reference(features, prototypes, logit_scale)
    return weighted_cross_entropy_unchecked(logits.float(), target, mode, margin, "mean"), logits


if triton is not None:

    @triton.jit
    def _cosine_fwd_kernel(f_ptr, t_ptr, scale_ptr, scale_value, target_ptr, out_ptr, f_norm_ptr, t_norm_ptr,
                           lse_ptr, partial_ptr, n_rows, n_protos, width, stride_f, stride_t, margin, eps,
                           SCALE_FROM_PTR: tl.constexpr, HAS_CE: tl.constexpr, FIXED: tl.constexpr,
                           IGNORE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        protos = tl.arange(0, BLOCK_K)
        row_mask, proto_mask = rows < n_rows, protos < n_protos
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        f_sq = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for start in range(0, width, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols[None, :] < width
            f = tl.load(f_ptr + rows[:, None].to(tl.int64) * stride_f + cols[None, :],
                        mask=row_mask[:, None] & col_mask, other=0.0)
            t = tl.load(t_ptr + protos[:, None] * stride_t + cols[None, :], mask=proto_mask[:, None] & col_mask,
                        other=0.0)
            acc = tl.dot(f, tl.trans(t), acc, input_precision=PRECISION)
            f32 = f.to(tl.float32)
            f_sq += tl.sum(f32 * f32, axis=1)
        f_norm = tl.maximum(tl.sqrt(f_sq), eps)
        t_norm = tl.load(t_norm_ptr + protos, mask=proto_mask, other=1.0)
        scale = tl.load(scale_ptr).to(tl.float32) if SCALE_FROM_PTR else scale_value
        out = (scale * acc / (f_norm[:, None] * t_norm[None, :])).to(out_ptr.dtype.element_ty)
        tile_mask = row_mask[:, None] & proto_mask[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * n_protos + protos[None, :], out, mask=tile_mask)
        tl.store(f_norm_ptr + rows, f_norm, mask=row_mask)
        if HAS_CE:  # the ranking CE of the logits as stored, exactly what the separate ops would compute
            valid, ignored, c, norm = target_rows(target_ptr, rows, row_mask, n_protos, IGNORE)
            x = out.to(tl.float32)
            z, _, is_c = weighted_logits(x, protos, c, norm, margin, FIXED)
            z = tl.where(proto_mask[None, :], z, float("-inf"))
            row_max = tl.where(row_mask, tl.max(z, axis=1), 0.0)
            total = tl.sum(tl.exp(z - row_max[:, None]), axis=1)
            lse = row_max + tl.log(tl.where(row_mask, total, 1.0))
            true_logit = tl.sum(tl.where(is_c & tile_mask, x, 0.0), axis=1)
            loss = tl.where(valid, lse - true_logit, tl.where(ignored, 0.0, float("nan")))
            tl.store(lse_ptr + rows, lse, mask=row_mask)
            tl.store(partial_ptr + 2 * pid, tl.sum(tl.where(row_mask, loss, 0.0), axis=0))
            tl.store(partial_ptr + 2 * pid + 1, tl.sum(tl.where(row_mask & ~ignored, 1.0, 0.0), axis=0))

    @triton.jit
    def _cosine_bwd_kernel(f_ptr, t_hat_ptr, out_ptr, f_norm_ptr, scale_ptr, scale_value, grad_ptr,
                           target_ptr, lse_ptr, up_ptr, up_stride, df_ptr, gs_ptr, col_ptr, r_ptr,
                           n_rows, n_protos, width, stride_f, stride_t, margin,
                           SCALE_FROM_PTR: tl.constexpr, HAS_GRAD: tl.constexpr, HAS_CE: tl.constexpr,
                           FIXED: tl.constexpr, IGNORE: tl.constexpr, NEED_DF: tl.constexpr,
                           PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        protos = tl.arange(0, BLOCK_K)
        row_mask, proto_mask = rows < n_rows, protos < n_protos
        tile_mask = row_mask[:, None] & proto_mask[None, :]
        tile = rows[:, None].to(tl.int64) * n_protos + protos[None, :]
        out = tl.load(out_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        g = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        if HAS_GRAD:
            g += tl.load(grad_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        if HAS_CE:
            valid, ignored, c, norm = target_rows(target_ptr, rows, row_mask, n_protos, IGNORE)
            lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
            up = row_upstream(up_ptr, up_stride, rows, row_mask, valid, ignored)
            z, dz_dx, is_c = weighted_logits(out, protos, c, norm, margin, FIXED)
            g += (tl.exp(z - lse[:, None]) - tl.where(is_c, 1.0, 0.0)) * dz_dx * up[:, None]
        g = tl.where(tile_mask, g, 0.0)
        inv_f = 1.0 / tl.load(f_norm_ptr + rows, mask=row_mask, other=1.0)
        g_out = g * out
        r = tl.sum(g_out, axis=1)  # f̂·∂f̂ of each row
        tl.store(r_ptr + pid, tl.sum(r, axis=0))
        tl.store(col_ptr + pid * BLOCK_K + protos, tl.sum(g_out, axis=0))
        tl.store(gs_ptr + tile, (g * inv_f[:, None]).to(gs_ptr.dtype.element_ty), mask=tile_mask)
        if NEED_DF:
            scale = tl.load(scale_ptr).to(tl.float32) if SCALE_FROM_PTR else scale_value
            g_dot = g.to(f_ptr.dtype.element_ty)
            for start in range(0, width, BLOCK_D):
                cols = start + tl.arange(0, BLOCK_D)
                col_mask = cols[None, :] < width
                t_hat = tl.load(t_hat_ptr + protos[:, None] * stride_t + cols[None, :],
                                mask=proto_mask[:, None] & col_mask, other=0.0)
                acc = tl.dot(g_dot, t_hat, input_precision=PRECISION)
                offsets = rows[:, None].to(tl.int64) * stride_f + cols[None, :]
                mask = row_mask[:, None] & col_mask
                f = tl.load(f_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                df = (scale * acc - r[:, None] * f * inv_f[:, None]) * inv_f[:, None]
                tl.store(df_ptr + offsets, df.to(df_ptr.dtype.element_ty), mask=mask)


def _tuned(op: str, features: Tensor, protos: int, run) -> HeadConfig:
    return pick(op, features, head_configs(protos, features.dtype), run)


@torch.library.custom_op("numclip::cosine_forward", mutates_args=())
def cosine_forward(features: Tensor, prototypes: Tensor, scale: Optional[Tensor], scale_value: float,
                   target: Optional[Tensor], fixed: bool, margin: float
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(logits [B, K], ‖f‖ [B], ‖t‖ [K], and with a target: logsumexp [B] and (loss sum, count) [2])."""
    rows, width = features.shape
    protos = prototypes.shape[0]
    device = features.device
    out = torch.empty(rows, protos, dtype=features.dtype, device=device)
    f_norm = torch.empty(rows, dtype=torch.float32, device=device)
    t_norm = torch.linalg.vector_norm(prototypes.float(), dim=1).clamp_min(EPS)  # K × D: a small read
    has_ce = target is not None
    lse = torch.empty(rows if has_ce else 0, dtype=torch.float32, device=device)
    if rows == 0:
        return out, f_norm, t_norm, lse, lse.new_zeros(2 if has_ce else 0)
    scale_arg = t_norm if scale is None else scale  # any pointer will do where the scale is a kernel scalar

    def run(config: HeadConfig) -> Tensor:
        programs = triton.cdiv(rows, config.block_b)
        partial = torch.empty(2 * programs if has_ce else 0, dtype=torch.float32, device=device)
        with on_device(features):
            _cosine_fwd_kernel[(programs,)](
                features, prototypes, scale_arg, scale_value, target if has_ce else f_norm, out, f_norm, t_norm,
                lse, partial, rows, protos, width, features.stride(0), prototypes.stride(0), margin, EPS,
                SCALE_FROM_PTR=scale is not None, HAS_CE=has_ce, FIXED=fixed, IGNORE=IGNORE_INDEX,
                PRECISION=dot_precision(features.dtype), BLOCK_B=config.block_b, BLOCK_K=block_k(protos),
                BLOCK_D=config.block_d, num_warps=config.num_warps, num_stages=config.num_stages)
        return partial.view(programs, 2).sum(0) if has_ce else partial

    totals = run(_tuned("cosine_forward", features, protos, run))
    return out, f_norm, t_norm, lse, totals


@cosine_forward.register_fake
def _(features, prototypes, scale, scale_value, target, fixed, margin):
    rows, protos = features.shape[0], prototypes.shape[0]
    has_ce = target is not None
    return (features.new_empty(rows, protos), features.new_empty(rows, dtype=torch.float32),
            features.new_empty(protos, dtype=torch.float32),
            features.new_empty(rows if has_ce else 0, dtype=torch.float32),
            features.new_empty(2 if has_ce else 0, dtype=torch.float32))


@torch.library.custom_op("numclip::cosine_backward", mutates_args=())
def cosine_backward(features: Tensor, prototypes: Tensor, out: Tensor, f_norm: Tensor, t_norm: Tensor,
                    scale: Optional[Tensor], scale_value: float, grad_out: Optional[Tensor], target: Optional[Tensor],
                    lse: Optional[Tensor], upstream: Optional[Tensor], fixed: bool, margin: float,
                    need_features: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(∂features or an empty tensor, g/‖f‖ [B, K], Σ_b g·out [K], Σ_bk g·out [])."""
    rows, width = features.shape
    protos = prototypes.shape[0]
    device = features.device
    d_features = torch.empty_like(features) if need_features else features.new_empty(0)
    g_scaled = torch.empty(rows, protos, dtype=features.dtype, device=device)
    if rows == 0:
        return d_features, g_scaled, t_norm.new_zeros(protos), t_norm.new_zeros(())
    scale_arg = t_norm if scale is None else scale  # any pointer will do where the scale is a kernel scalar
    has_ce = target is not None
    t_hat = (prototypes.float() / t_norm[:, None]).to(features.dtype)  # K × D, normalised once

    def run(config: HeadConfig) -> tuple[Tensor, Tensor]:
        programs = triton.cdiv(rows, config.block_b)
        columns = torch.empty(programs, block_k(protos), dtype=torch.float32, device=device)
        r = torch.empty(programs, dtype=torch.float32, device=device)
        with on_device(features):
            _cosine_bwd_kernel[(programs,)](
                features, t_hat, out, f_norm, scale_arg, scale_value,
                out if grad_out is None else grad_out, target if has_ce else f_norm, lse if has_ce else f_norm,
                upstream if has_ce else f_norm, 0 if not has_ce or upstream.numel() == 1 else 1,
                d_features, g_scaled, columns, r, rows, protos, width, features.stride(0), t_hat.stride(0),
                margin, SCALE_FROM_PTR=scale is not None, HAS_GRAD=grad_out is not None, HAS_CE=has_ce, FIXED=fixed,
                IGNORE=IGNORE_INDEX, NEED_DF=need_features, PRECISION=dot_precision(features.dtype),
                BLOCK_B=config.block_b, BLOCK_K=block_k(protos), BLOCK_D=config.block_d,
                num_warps=config.num_warps, num_stages=config.num_stages)
        return columns.sum(0)[:protos], r.sum()

    columns, r = run(_tuned("cosine_backward", features, protos, run))
    return d_features, g_scaled, columns, r


@cosine_backward.register_fake
def _(features, prototypes, out, f_norm, t_norm, scale, scale_value, grad_out, target, lse, upstream, fixed, margin,
      need_features):
    return (torch.empty_like(features) if need_features else features.new_empty(0), torch.empty_like(out),
            t_norm.new_empty(prototypes.shape[0]), t_norm.new_empty(()))


def _setup_context(ctx, inputs, output) -> None:
    features, prototypes, scale, scale_value, target, fixed, margin = inputs
    out, f_norm, t_norm, lse, _ = output
    ctx.save_for_backward(features, prototypes, out, f_norm, t_norm, scale, target, lse)
    ctx.scale_value, ctx.fixed, ctx.margin = scale_value, fixed, margin


def _backward(ctx, grad_out, _grad_f_norm, _grad_t_norm, _grad_lse, grad_totals):
    features, prototypes, out, f_norm, t_norm, scale, target, lse = ctx.saved_tensors
    need_f, need_t, need_s = ctx.needs_input_grad[:3]
    upstream = None if target is None or grad_totals is None else grad_totals[:1].float().contiguous()
    if not (need_f or need_t or need_s) or (grad_out is None and upstream is None):
        return None, None, None, None, None, None, None
    has_ce = upstream is not None
    d_features, g_scaled, columns, r = cosine_backward(
        features, prototypes, out, f_norm, t_norm, scale, ctx.scale_value,
        None if grad_out is None else grad_out.contiguous(), target if has_ce else None, lse if has_ce else None,
        upstream, ctx.fixed, ctx.margin, need_f)
    s = scale.float() if scale is not None else ctx.scale_value
    d_prototypes = d_scale = None
    if need_t:
        t_hat = prototypes.float() / t_norm[:, None]
        d_prototypes = ((s * (g_scaled.T @ features).float() - columns[:, None] * t_hat) / t_norm[:, None])
        d_prototypes = d_prototypes.to(prototypes.dtype)
    if need_s:
        d_scale = (r / s).reshape(scale.shape).to(scale.dtype)
    return d_features if need_f else None, d_prototypes, d_scale, None, None, None, None


cosine_forward.register_autograd(_backward, setup_context=_setup_context)


def _scale(logit_scale: Tensor | float, device: torch.device) -> tuple[Optional[Tensor], float]:
    """A tensor scale stays on its device (a tensor argument, with a gradient); a float is a kernel scalar."""
    if torch.is_tensor(logit_scale):
        return logit_scale.to(device=device, dtype=torch.float32).reshape(()), 1.0
    return None, float(logit_scale)


def _check(features: Tensor, prototypes: Tensor) -> None:
    if features.dim() != 2 or prototypes.dim() != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"features [B, D] and prototypes [K, D] must share D, got "
                         f"{tuple(features.shape)} and {tuple(prototypes.shape)}")


def _triton_fits(impl: str, prototypes: Tensor) -> str:
    """Triton covers K ≤ 128 prototypes (one register tile); "auto" takes PyTorch beyond, "triton" refuses."""
    if prototypes.shape[0] <= MAX_PROTOTYPES or impl not in ("auto", "triton"):
        return impl
    if impl == "triton":
        raise ValueError(f"the Triton head covers up to {MAX_PROTOTYPES} prototypes, got {prototypes.shape[0]}: "
                         f"use impl='auto' or 'torch'")
    return "torch"


def triton_cosine_logits(features: Tensor, prototypes: Tensor, logit_scale: Tensor | float) -> Tensor:
    scale, value = _scale(logit_scale, features.device)
    out, *_ = cosine_forward(features.contiguous(), prototypes.to(features.dtype).contiguous(), scale, value, None,
                             False, 1.0)
    return out


def triton_cosine_ranking(features: Tensor, prototypes: Tensor, logit_scale: Tensor | float, target: Tensor,
                          fixed: bool, margin: float) -> tuple[Tensor, Tensor]:
    scale, value = _scale(logit_scale, features.device)
    out, _, _, _, totals = cosine_forward(features.contiguous(), prototypes.to(features.dtype).contiguous(), scale,
                                          value, target.contiguous(), fixed, float(margin))
    return reduce_loss(totals, "mean", torch.float32), out


def cosine_logits(features: Tensor, prototypes: Tensor, logit_scale: Tensor | float, *,
                  impl: Impl = "auto") -> Tensor:
    """Logits [B, K] = s · normalize(features [B, D]) @ normalize(prototypes [K, D])ᵀ, s = `logit_scale`
    (already exponentiated). Gradients reach the features, the prototypes and a tensor scale."""
    _check(features, prototypes)
    chosen = settle(_triton_fits(impl, prototypes), "cosine_logits", (features, prototypes), (), {
        "triton": lambda f, t: triton_cosine_logits(f, t, logit_scale),
        "torch": lambda f, t: cosine_logits_reference(f, t, logit_scale)})
    if chosen == "triton":
        return triton_cosine_logits(features, prototypes, logit_scale)
    fn = compiled(cosine_logits_reference) if chosen == "compile" else cosine_logits_reference
    return fn(features, prototypes, logit_scale)


def cosine_ranking_cross_entropy(features: Tensor, prototypes: Tensor, logit_scale: Tensor | float, target: Tensor,
                                 *, mode: Mode = "faithful", margin: float = 1.0,
                                 impl: Impl = "auto") -> tuple[Tensor, Tensor]:
    """(mean ranking-weighted CE in float32, logits [B, K]) of the cosine head, fused on GPU: one pass
    from features and prototypes to the loss, and one back to their gradients."""
    _check(features, prototypes)
    logits_shape = torch.empty(features.shape[0], prototypes.shape[0], device="meta")
    check_inputs(logits_shape, target, mode, ignore_index=True, host_checks=not torch.compiler.is_compiling())
    fixed = mode == "fixed"
    chosen = settle(_triton_fits(impl, prototypes), "cosine_ranking_cross_entropy", (features, prototypes),
                    (target,), {
                        "triton": lambda f, t: triton_cosine_ranking(f, t, logit_scale, target, fixed, margin)[0],
                        "torch": lambda f, t: cosine_ranking_reference(f, t, logit_scale, target, mode, margin)[0]})
    if chosen == "triton":
        return triton_cosine_ranking(features, prototypes, logit_scale, target, fixed, margin)
    fn = compiled(cosine_ranking_reference) if chosen == "compile" else cosine_ranking_reference
    return fn(features, prototypes, logit_scale, target, mode, margin)
