"""Triton kernels against the fp64 PyTorch reference: values and every gradient.

On CPU they run under TRITON_INTERPRET=1 (set in conftest.py), with small shapes: the interpreter
costs milliseconds per program. With NUMCLIP_TEST_DEVICE=cuda the same tests run natively on a GPU.
"""

import os

import pytest
import torch

from numclip.kernels import cosine_logits, cosine_logits_reference, ranking_weighted_cross_entropy
from numclip.kernels.dispatch import resolve
from numclip.losses.ranking import ranking_weighted_cross_entropy as reference_ce

DEVICE = os.environ.get("NUMCLIP_TEST_DEVICE", "cpu")
DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if DEVICE == "cuda" else [])
LOSS_SHAPES = [(16, 5), (7, 101)]  # a realistic NumCLIP shape and an odd (non power of two) one
HEAD_SHAPES = [(32, 10, 64), (19, 5, 77)]


def _tolerance(dtype, kernel, reference_fp64, torch_low):
    """fp32: tight. Low precision: no worse than torch's own error at that dtype, or one rounding of
    the result (the gradient is stored in the input dtype during the forward, Liger-style, and scaled
    by the upstream gradient afterwards: one more rounding than torch's fused backward)."""
    if dtype == torch.float32:
        return dict(atol=1e-5, rtol=1e-4)
    torch_error = (torch_low.double() - reference_fp64).abs().max().item()
    one_rounding = torch.finfo(dtype).eps * reference_fp64.abs().max().item()
    return dict(atol=max(2 * torch_error, one_rounding) + 1e-3, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
@pytest.mark.parametrize("mode", ["faithful", "fixed"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ranking_ce_values_and_gradients(dtype, shape, mode, reduction):
    g = torch.Generator().manual_seed(shape[0] * 1000 + shape[1] + 7 * (mode == "fixed") + len(reduction))
    rows, cols = shape
    logits = (torch.randn(rows, cols, generator=g) * 3).to(DEVICE)  # both signs
    target = torch.randint(0, cols, (rows,), generator=g).to(DEVICE)
    target[0], target[-1] = 0, cols - 1
    upstream = torch.randn(rows, generator=g).to(DEVICE) if reduction == "none" else torch.tensor(0.7, device=DEVICE)

    x = logits.to(dtype).requires_grad_()
    out = ranking_weighted_cross_entropy(x, target, mode=mode, reduction=reduction, impl="triton")
    (grad,) = torch.autograd.grad(out, x, upstream.to(out.dtype))

    x64 = logits.to(dtype).double().requires_grad_()
    ref = reference_ce(x64, target, mode, 1.0, reduction)
    (ref_grad,) = torch.autograd.grad(ref, x64, upstream.double())
    x_low = logits.to(dtype).requires_grad_()
    low = reference_ce(x_low, target, mode, 1.0, reduction)
    (low_grad,) = torch.autograd.grad(low, x_low, upstream.to(low.dtype))

    assert out.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **_tolerance(dtype, out, ref, low))
    torch.testing.assert_close(grad.double(), ref_grad, **_tolerance(dtype, grad, ref_grad, low_grad))


def test_ranking_ce_no_grad_and_bad_targets():
    logits = torch.randn(6, 5, device=DEVICE)
    target = torch.tensor([0, 1, 2, 3, 4, 0], device=DEVICE)
    with torch.no_grad():
        out = ranking_weighted_cross_entropy(logits, target, impl="triton")
    torch.testing.assert_close(out, reference_ce(logits, target), atol=1e-5, rtol=1e-5)
    if DEVICE == "cpu":  # on CUDA the check is an asynchronous device assert
        for bad in ([0, 1, 2, 3, 5, 0], [-1, 1, 2, 3, 4, 0]):
            with pytest.raises(ValueError, match=r"target values must be in \[0, 4\]"):
                ranking_weighted_cross_entropy(logits, torch.tensor(bad), impl="triton")
    with pytest.raises(ValueError, match="integer class indices"):
        ranking_weighted_cross_entropy(logits, target.float(), impl="triton")
    with pytest.raises(ValueError, match="d >= 2"):
        ranking_weighted_cross_entropy(logits[:, :1], target.clamp(max=0), impl="triton")
    with pytest.raises(ValueError, match="mode"):
        ranking_weighted_cross_entropy(logits, target, mode="kind", impl="triton")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", HEAD_SHAPES)
def test_cosine_logits_values_and_gradients(dtype, shape):
    rows, protos, width = shape
    g = torch.Generator().manual_seed(rows * protos)
    f = torch.randn(rows, width, generator=g).to(DEVICE)
    t = torch.randn(protos, width, generator=g).to(DEVICE)
    upstream = torch.randn(rows, protos, generator=g).to(DEVICE)

    inputs = [f.to(dtype).requires_grad_(), t.to(dtype).requires_grad_(),
              torch.tensor(14.3, device=DEVICE, requires_grad=True)]
    out = cosine_logits(*inputs, impl="triton")
    grads = torch.autograd.grad(out, inputs, upstream.to(dtype))
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    ref = cosine_logits_reference(*ref_inputs)
    ref_grads = torch.autograd.grad(ref, ref_inputs, upstream.double())
    low_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    low = cosine_logits_reference(*low_inputs)
    low_grads = torch.autograd.grad(low, low_inputs, upstream.to(dtype))

    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **_tolerance(dtype, out, ref, low))
    for name, a, b, c in zip(("features", "prototypes", "scale"), grads, ref_grads, low_grads):
        torch.testing.assert_close(a.double(), b, **_tolerance(dtype, a, b, c), msg=lambda m, name=name: f"{name}: {m}")


def test_cosine_logits_float_scale_zero_rows_and_no_grad():
    f = torch.randn(9, 32, device=DEVICE)
    f[3] = 0  # a zero feature gives zero logits, not NaN (eps as in F.normalize)
    t = torch.randn(4, 32, device=DEVICE)
    with torch.no_grad():
        out = cosine_logits(f, t, 100.0, impl="triton")
    torch.testing.assert_close(out, cosine_logits_reference(f, t, 100.0), atol=1e-4, rtol=1e-4)
    assert torch.isfinite(out).all() and out[3].abs().max() == 0


def test_dispatch():
    cpu = torch.zeros(2)
    assert resolve("auto", cpu) == "torch", "CPU tensors take the PyTorch path"
    assert resolve("compile", cpu) == "compile"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve("cuda-magic", cpu)
    if torch.cuda.is_available():
        assert resolve("auto", cpu.cuda()) == "triton"
