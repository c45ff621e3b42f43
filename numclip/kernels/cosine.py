"""Fused cosine-similarity head (Triton), beside its PyTorch reference.

Forward: one program per (B-tile, K-tile) accumulates f·t and both squared norms over D in one pass,
so the normalised copies of the features and prototypes are never written; the norms are saved for
the backward. Backward: dense products on the saved norms (cuBLAS does those best).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from numclip.kernels.dispatch import Impl, compiled, interpreting, resolve

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

EPS = 1e-12


def cosine_logits_reference(features: torch.Tensor, prototypes: torch.Tensor,
                            logit_scale: torch.Tensor | float) -> torch.Tensor:
    """s * normalize(features) @ normalize(prototypes).T, in the inputs' dtype."""
    return logit_scale * F.normalize(features, dim=-1, eps=EPS) @ F.normalize(prototypes, dim=-1, eps=EPS).T


if triton is not None:

    @triton.jit
    def _cosine_fwd_kernel(f_ptr, t_ptr, out_ptr, f_norm_ptr, t_norm_ptr, scale_ptr, n_rows, n_protos, width,
                           stride_f, stride_t, stride_out, eps,
                           DOT_FP32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_D: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_k = tl.program_id(1)
        rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        protos = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        f_sq = tl.zeros((BLOCK_B,), dtype=tl.float32)
        t_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for start in range(0, width, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            f = tl.load(f_ptr + rows[:, None].to(tl.int64) * stride_f + cols[None, :],
                        mask=(rows[:, None] < n_rows) & (cols[None, :] < width), other=0.0)
            t = tl.load(t_ptr + protos[:, None].to(tl.int64) * stride_t + cols[None, :],
                        mask=(protos[:, None] < n_protos) & (cols[None, :] < width), other=0.0)
            f32, t32 = f.to(tl.float32), t.to(tl.float32)
            if DOT_FP32:  # the interpreter's bf16 dot is wrong, and fp32 inputs should stay exact
                acc += tl.dot(f32, tl.trans(t32), input_precision="ieee")
            else:
                acc += tl.dot(f, tl.trans(t))
            f_sq += tl.sum(f32 * f32, axis=1)
            t_sq += tl.sum(t32 * t32, axis=1)
        f_norm = tl.maximum(tl.sqrt(f_sq), eps)
        t_norm = tl.maximum(tl.sqrt(t_sq), eps)
        scale = tl.load(scale_ptr).to(tl.float32)
        out = scale * acc / (f_norm[:, None] * t_norm[None, :])
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_out + protos[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < n_rows) & (protos[None, :] < n_protos))
        if pid_k == 0:
            tl.store(f_norm_ptr + rows, f_norm, mask=rows < n_rows)
        if pid_b == 0:
            tl.store(t_norm_ptr + protos, t_norm, mask=protos < n_protos)


class CosineLogitsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, prototypes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        features, prototypes = features.contiguous(), prototypes.contiguous()
        rows, width = features.shape
        protos = prototypes.shape[0]
        out = torch.empty(rows, protos, dtype=features.dtype, device=features.device)
        f_norm = torch.empty(rows, dtype=torch.float32, device=features.device)
        t_norm = torch.empty(protos, dtype=torch.float32, device=features.device)
        block_b, block_k, block_d = 64, max(16, min(64, triton.next_power_of_2(protos))), 64
        grid = (triton.cdiv(rows, block_b), triton.cdiv(protos, block_k))
        dot_fp32 = features.dtype == torch.float32 or interpreting()
        _cosine_fwd_kernel[grid](features, prototypes, out, f_norm, t_norm, scale, rows, protos, width,
                                 features.stride(0), prototypes.stride(0), out.stride(0), EPS,
                                 DOT_FP32=dot_fp32, BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_D=block_d)
        ctx.save_for_backward(features, prototypes, f_norm, t_norm, out, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, prototypes, f_norm, t_norm, out, scale = ctx.saved_tensors
        s = scale.float()
        g = grad_out.float()
        f_hat = features.float() / f_norm[:, None]
        t_hat = prototypes.float() / t_norm[:, None]
        d_f_hat = s * (g @ t_hat)
        d_t_hat = s * (g.T @ f_hat)
        d_features = (d_f_hat - f_hat * (d_f_hat * f_hat).sum(-1, keepdim=True)) / f_norm[:, None]
        d_prototypes = (d_t_hat - t_hat * (d_t_hat * t_hat).sum(-1, keepdim=True)) / t_norm[:, None]
        d_scale = (g * out.float()).sum() / s if ctx.needs_input_grad[2] else None
        return (d_features.to(features.dtype), d_prototypes.to(prototypes.dtype),
                None if d_scale is None else d_scale.reshape(scale.shape).to(scale.dtype))


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor | float, *,
                  impl: Impl = "auto") -> torch.Tensor:
    """Logits [B, K] = s · normalize(features [B, D]) @ normalize(prototypes [K, D])ᵀ, s = `logit_scale`
    (already exponentiated). Gradients reach the features, the prototypes and a tensor scale."""
    if features.dim() != 2 or prototypes.dim() != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"features [B, D] and prototypes [K, D] must share D, got "
                         f"{tuple(features.shape)} and {tuple(prototypes.shape)}")
    chosen = resolve(impl, features, prototypes)
    if chosen == "triton":
        scale = logit_scale if torch.is_tensor(logit_scale) else torch.tensor(float(logit_scale))
        scale = scale.to(device=features.device, dtype=torch.float32).reshape(())
        if prototypes.dtype != features.dtype:
            prototypes = prototypes.to(features.dtype)
        return CosineLogitsFunction.apply(features, prototypes, scale)
    fn = compiled(cosine_logits_reference) if chosen == "compile" else cosine_logits_reference
    return fn(features, prototypes, logit_scale)
