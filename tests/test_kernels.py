"""Triton kernels against the fp64 PyTorch reference: values and every gradient.

On CPU they run under TRITON_INTERPRET=1 (set in conftest.py), with small shapes: the interpreter
costs milliseconds per program, and conftest upcasts bf16 `tl.dot` operands there (the interpreter
multiplies their raw bits). With NUMCLIP_TEST_DEVICE=cuda the same tests run natively on a GPU.
"""

import os

import pytest
import torch

from numclip.kernels import (
    cosine_logits,
    cosine_logits_reference,
    cosine_ranking_cross_entropy,
    cosine_ranking_reference,
    ranking_ce,
    ranking_weighted_cross_entropy,
)
from numclip.kernels.dispatch import MeasuredChoice, pick, resolve, settle
from numclip.losses.ranking import ranking_weighted_cross_entropy as reference_ce

DEVICE = os.environ.get("NUMCLIP_TEST_DEVICE", "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LOSS_SHAPES = [(16, 5), (7, 101)]  # a realistic NumCLIP shape and an odd (non power of two) one
HEAD_SHAPES = [(32, 10, 64), (19, 5, 77), (70, 101, 40)]  # the last spans two row tiles and K = 101


def _tolerance(dtype, kernel, reference_fp64, torch_low):
    """fp32: tight. Low precision: no worse than twice torch's own error at that dtype, or one rounding
    of the largest result (the kernels compute in fp32 and round once, at the store)."""
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




def _ranking_case(rows, cols, seed, dtype, with_ignored=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, cols, generator=g) * 3).to(dtype).to(DEVICE)
    target = torch.randint(0, cols, (rows,), generator=g).to(DEVICE)
    if rows:
        target[0], target[-1] = 0, cols - 1
    if with_ignored and rows > 2:
        target[1] = -100
    return logits, target


def _loss_and_grad(fn, logits, upstream=None):
    x = logits.clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out) if upstream is None else upstream.to(out.dtype))
    return out, grad


def test_ranking_ce_rows_longer_than_a_tile(monkeypatch):
    """Rows longer than the widest tile loop over it with an online logsumexp."""
    monkeypatch.setattr(ranking_ce, "MAX_BLOCK_D", 32)
    logits, target = _ranking_case(9, 70, 3, torch.float32)
    for mode in ("faithful", "fixed"):
        out, grad = _loss_and_grad(
            lambda x, mode=mode: ranking_weighted_cross_entropy(x, target, mode=mode, impl="triton"), logits)
        ref, ref_grad = _loss_and_grad(lambda x, mode=mode: reference_ce(x, target, mode), logits.double())
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad.double(), ref_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ranking_ce_large_batch_with_a_grad_scaler_upstream(dtype):
    """At large B the mean's 1/B and a GradScaler-style 2^10 meet in fp32 before the one rounding, so an
    fp16 gradient of p/B ≈ 1e-5 (subnormal in fp16) is neither flushed nor rounded twice."""
    logits, target = _ranking_case(4096, 5, 11, dtype)
    upstream = torch.tensor(1024.0, device=DEVICE)
    _, grad = _loss_and_grad(lambda x: ranking_weighted_cross_entropy(x, target, impl="triton"), logits, upstream)
    _, ref_grad = _loss_and_grad(lambda x: reference_ce(x, target), logits.double(), upstream.double())
    assert grad.dtype == dtype
    error = (grad.double() - ref_grad).abs() / ref_grad.abs().max()
    assert error.max() < 2 * torch.finfo(dtype).eps, error.max()


def test_ranking_ce_of_a_strided_view():
    """Logits sliced from a wider tensor (rows further apart than d) give the reference's gradient."""
    wide, target = _ranking_case(8, 12, 9, torch.float32)
    out, grad = _loss_and_grad(lambda x: ranking_weighted_cross_entropy(x[:, :7], target.clamp(max=6),
                                                                        impl="triton"), wide)
    ref, ref_grad = _loss_and_grad(lambda x: reference_ce(x[:, :7], target.clamp(max=6)), wide)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_ranking_ce_ignores_minus_100_like_cross_entropy():
    logits, target = _ranking_case(12, 7, 5, torch.float32, with_ignored=True)
    for reduction in ("mean", "sum", "none"):
        out, grad = _loss_and_grad(lambda x, r=reduction: ranking_weighted_cross_entropy(x, target, reduction=r,
                                                                            impl="triton"), logits)
        ref, ref_grad = _loss_and_grad(lambda x, r=reduction: reference_ce(x, target, reduction=r), logits)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
        assert grad[1].abs().max() == 0, "an ignored row has no gradient"


def test_ranking_ce_empty_batch_matches_reference():
    logits, target = _ranking_case(0, 5, 0, torch.float32)
    for reduction in ("mean", "sum", "none"):
        out, grad = _loss_and_grad(lambda x, r=reduction: ranking_weighted_cross_entropy(x, target, reduction=r,
                                                                            impl="triton"), logits)
        ref, _ = _loss_and_grad(lambda x, r=reduction: reference_ce(x, target, reduction=r), logits)
        torch.testing.assert_close(out, ref, equal_nan=True)  # mean of nothing is NaN, as in F.cross_entropy
        assert grad.shape == (0, 5)


def test_ranking_ce_out_of_range_targets():
    """The wrapper refuses them on CPU; the kernel itself (what runs on CUDA, unchecked) marks the row NaN."""
    logits, target = _ranking_case(6, 5, 2, torch.float32)
    if DEVICE == "cpu":
        for bad in ([0, 1, 2, 3, 5, 0], [-1, 1, 2, 3, 4, 0]):
            with pytest.raises(ValueError, match=r"target values must be in \[0, 4\] \(or -100, ignored\)"):
                ranking_weighted_cross_entropy(logits, torch.tensor(bad), impl="triton")
    bad = target.clone()
    bad[2] = 9
    rows, lse = ranking_ce.ranking_ce_forward(logits, bad, False, 1.0, True)
    grad = ranking_ce.ranking_ce_backward(logits, bad, lse, torch.ones(6, device=DEVICE), False, 1.0)
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3, 4, 5]]).all()
    assert torch.isnan(grad[2]).all() and torch.isfinite(grad[[0, 1, 3, 4, 5]]).all()
    with pytest.raises(ValueError, match="integer class indices"):
        ranking_weighted_cross_entropy(logits, target.float(), impl="triton")
    with pytest.raises(ValueError, match="d >= 2"):
        ranking_weighted_cross_entropy(logits[:, :1], target.clamp(max=0), impl="triton")
    with pytest.raises(ValueError, match="mode"):
        ranking_weighted_cross_entropy(logits, target, mode="kind", impl="triton")


def test_no_grad_computes_no_gradient():
    logits, target = _ranking_case(6, 5, 1, torch.float32)
    x = logits.clone().requires_grad_()
    with torch.no_grad():
        out = ranking_weighted_cross_entropy(x, target, impl="triton")
        head = cosine_logits(x, x[:3], 10.0, impl="triton")
    assert out.grad_fn is None and head.grad_fn is None
    torch.testing.assert_close(out, reference_ce(logits, target), atol=1e-5, rtol=1e-5)


def _head_inputs(shape, dtype, frozen=()):
    rows, protos, width = shape
    g = torch.Generator().manual_seed(rows * protos)
    f = torch.randn(rows, width, generator=g).to(DEVICE)
    t = torch.randn(protos, width, generator=g).to(DEVICE)
    upstream = torch.randn(rows, protos, generator=g).to(DEVICE)
    inputs = [f.to(dtype), t.to(dtype), torch.tensor(14.3, device=DEVICE)]
    inputs = [x.requires_grad_(name not in frozen) for x, name in zip(inputs, ("features", "prototypes", "scale"))]
    return inputs, upstream


def _compare_grads(fn, reference, inputs, dtype, upstream=None):
    """Values of fn(*inputs) against the fp64 reference, and the gradients (for `upstream`) of the inputs
    that need one. A scalar in low precision may also be off by two roundings of itself (a sum over
    the batch of rounded terms, e.g. the scale's gradient)."""
    wanted = [x for x in inputs if x.requires_grad]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, wanted, None if upstream is None else upstream.to(out.dtype))
    ref_inputs = [x.detach().double().requires_grad_(x.requires_grad) for x in inputs]
    ref = reference(*ref_inputs)
    ref_grads = torch.autograd.grad(ref, [x for x in ref_inputs if x.requires_grad],
                                    None if upstream is None else upstream.double())
    low_inputs = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    low = reference(*low_inputs)
    low_grads = torch.autograd.grad(low, [x for x in low_inputs if x.requires_grad],
                                    None if upstream is None else upstream.to(low.dtype))
    for a, b, c in zip((out, *grads), (ref, *ref_grads), (low, *low_grads)):
        assert a.dtype == c.dtype
        tolerance = _tolerance(dtype, a, b, c)
        if a.numel() == 1 and dtype != torch.float32:
            tolerance["atol"] = max(tolerance["atol"], 2 * torch.finfo(dtype).eps * b.abs().item())
        torch.testing.assert_close(a.double(), b, **tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", HEAD_SHAPES)
@pytest.mark.parametrize("frozen", [(), ("features",)])
def test_cosine_logits_values_and_gradients(dtype, shape, frozen):
    inputs, upstream = _head_inputs(shape, dtype, frozen)
    _compare_grads(lambda f, t, s: cosine_logits(f, t, s, impl="triton"), cosine_logits_reference, inputs, dtype,
                   upstream)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["faithful", "fixed"])
@pytest.mark.parametrize("logits_used", [False, True])
def test_fused_head_and_ranking_ce(dtype, mode, logits_used):
    """One op from features and prototypes to the loss; the returned logits carry other terms' gradients."""
    inputs, upstream = _head_inputs((70, 101, 40), dtype)
    target = torch.randint(0, 101, (70,), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    target[1] = -100

    def total(fn):
        def loss(f, t, s):
            value, logits = fn(f, t, s, target, mode, 1.0)
            return value.double() + (0.01 * (logits.double() * upstream.double()).sum() if logits_used else 0)
        return loss
    fused = total(lambda f, t, s, y, m, margin: cosine_ranking_cross_entropy(f, t, s, y, mode=m, margin=margin,
                                                                             impl="triton"))
    _compare_grads(fused, total(cosine_ranking_reference), inputs, dtype)


def test_cosine_float_scale_zero_rows_empty_batch_and_limits():
    f = torch.randn(9, 32, device=DEVICE)
    f[3] = 0  # a zero feature gives zero logits, not NaN (eps as in F.normalize)
    t = torch.randn(4, 32, device=DEVICE)
    with torch.no_grad():
        out = cosine_logits(f, t, 100.0, impl="triton")
    torch.testing.assert_close(out, cosine_logits_reference(f, t, 100.0), atol=1e-4, rtol=1e-4)
    assert torch.isfinite(out).all() and out[3].abs().max() == 0
    empty = torch.zeros(0, 32, device=DEVICE, requires_grad=True)
    proto = t.clone().requires_grad_()
    logits = cosine_logits(empty, proto, 10.0, impl="triton")
    d_empty, d_proto = torch.autograd.grad(logits.sum(), [empty, proto])
    assert logits.shape == (0, 4) and d_empty.shape == (0, 32) and d_proto.abs().max() == 0
    many = torch.randn(129, 32, device=DEVICE)
    with pytest.raises(ValueError, match="up to 128 prototypes"):
        cosine_logits(f, many, 10.0, impl="triton")
    torch.testing.assert_close(cosine_logits(f, many, 10.0), cosine_logits_reference(f, many, 10.0))


def test_torch_compile_fullgraph_of_a_model_using_the_ops():
    """AOTAutograd traces the ops with fake tensors (the custom-op registrations) in one graph."""
    torch._dynamo.reset()

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prototypes = torch.nn.Parameter(torch.randn(5, 32))
            self.scale = torch.nn.Parameter(torch.tensor(10.0))

        def forward(self, features, target):
            loss, logits = cosine_ranking_cross_entropy(features, self.prototypes, self.scale, target, impl="triton")
            again = cosine_logits(features, self.prototypes, self.scale, impl="triton")
            return loss + ranking_weighted_cross_entropy(logits.float() + again.float(), target, impl="triton")

    torch.manual_seed(0)
    model = Head().to(DEVICE)
    features = torch.randn(16, 32, device=DEVICE, requires_grad=True)
    target = torch.randint(0, 5, (16,), device=DEVICE)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_loss = model(features, target)
    eager_grads = torch.autograd.grad(eager_loss, [features, *model.parameters()])
    loss = compiled(features, target)
    grads = torch.autograd.grad(loss, [features, *model.parameters()])
    torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_tiles_and_alignment_hints():
    for cols in (2, 5, 101, 1000, 4096, 10000):
        for config in ranking_ce.tile_configs(cols):
            assert config.block_d >= min(cols, ranking_ce.MAX_BLOCK_D) and config.rows >= 1
    assert ranking_ce.row_alignment(1000, 2) == 8 and ranking_ce.row_alignment(1000, 4) == 4
    assert ranking_ce.row_alignment(101, 4) == 1 and ranking_ce.row_alignment(64, 2) == 8


def test_measured_choice_times_once_and_remembers(tmp_path):
    calls = []

    def timer(fn, device):
        calls.append(fn())
        return {"slow": 2.0, "fast": 1.0}[calls[-1]]

    path = tmp_path / "choices.json"
    chooser = MeasuredChoice(path, timer)
    key = MeasuredChoice.key("op", torch.device("cpu"), torch.bfloat16, 4096, 101)
    assert "torch " in key and "triton " in key and "bfloat16" in key
    candidates = {"slow": lambda: "slow", "fast": lambda: "fast"}
    assert chooser.choose(key, candidates, torch.device("cpu")) == "fast" and len(calls) == 2
    assert chooser.choose(key, candidates, torch.device("cpu")) == "fast" and len(calls) == 2, "remembered"
    again = MeasuredChoice(path, timer)
    assert again.choose(key, candidates, torch.device("cpu")) == "fast" and len(calls) == 2, "read from disk"
    assert again.table()[key]["ms"] == {"slow": 2.0, "fast": 1.0}
    path.write_text("{damaged")
    assert MeasuredChoice(path, timer).choose(key, candidates, torch.device("cpu")) == "fast" and len(calls) == 4


def test_dispatch():
    cpu = torch.zeros(2, 3)
    assert resolve("auto", cpu) == "torch", "CPU tensors take the PyTorch path"
    assert settle("auto", "op", (cpu,), (), {}) == "torch"
    assert resolve("compile", cpu) == "compile"
    assert pick("op", cpu, ["first", "second"], lambda c: None) == "first", "untimed off CUDA"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve("cuda-magic", cpu)
    if torch.cuda.is_available():
        assert resolve("auto", cpu.cuda()) == "auto", "settled by measurement on CUDA"
