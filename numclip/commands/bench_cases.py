"""The cases `numclip bench` times: for an op, an implementation and a shape, a timed closure for every
pass beside that pass's roofline cost (`numclip.kernels.roofline`, the one source of the byte counts,
so the measured GB/s and the model can never disagree on what must move).

Ops: "loss" (the ranking CE of B × d logits), "head" (cosine logits of B × D features against K × D
prototypes) and "head+loss" (the fused op; its "torch" is the eager chain `cosine_ranking_reference`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from numclip.kernels import cosine_logits, cosine_ranking_cross_entropy, ranking_weighted_cross_entropy
from numclip.kernels.dispatch import triton_available
from numclip.kernels.released import released_ce_dis_loss
from numclip.kernels.roofline import PASSES, Cost, costs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Cases = dict[str, tuple[Callable[[], object], Cost]]


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


def _cases(op: str, forward: Callable[[bool], torch.Tensor], inputs: list[torch.Tensor], rows: int, width: int,
           protos: int, like: torch.Tensor) -> Cases:
    model = costs(op, rows, width, protos, like.element_size())
    return {step: (_timed(forward, inputs, step), model[step]) for step in PASSES}


def loss_cases(impl: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> Cases:
    logits = torch.randn(rows, cols, device=device, dtype=dtype) * 3
    target = torch.randint(0, cols, (rows,), device=device)
    fn = _loss_fn(impl, cols)
    x = logits.clone().requires_grad_()

    def forward(with_grad: bool) -> torch.Tensor:
        return fn(x if with_grad else logits, target)

    return _cases("loss", forward, [x], rows, cols, 0, logits)


def _head_inputs(rows: int, width: int, protos: int, dtype: torch.dtype, device: torch.device):
    f = torch.randn(rows, width, device=device, dtype=dtype)
    t = torch.randn(protos, width, device=device, dtype=dtype)
    scale = torch.tensor(100.0, device=device)
    return (f, t, scale), [f.clone().requires_grad_(), t.clone().requires_grad_(), scale.clone().requires_grad_()]


def head_cases(impl: str, rows: int, width: int, protos: int, dtype: torch.dtype, device: torch.device) -> Cases:
    plain, inputs = _head_inputs(rows, width, protos, dtype, device)

    def forward(with_grad: bool) -> torch.Tensor:
        return cosine_logits(*(inputs if with_grad else plain), impl=impl)

    return _cases("head", forward, inputs, rows, width, protos, plain[0])


def head_loss_cases(impl: str, rows: int, width: int, protos: int, dtype: torch.dtype,
                    device: torch.device) -> Cases:
    """The fused head + ranking CE; impl "torch" runs the eager chain, and the loss is what is differentiated."""
    plain, inputs = _head_inputs(rows, width, protos, dtype, device)
    target = torch.randint(0, protos, (rows,), device=device)

    def forward(with_grad: bool) -> torch.Tensor:
        loss, _ = cosine_ranking_cross_entropy(*(inputs if with_grad else plain), target, mode="faithful", impl=impl)
        return loss

    return _cases("head+loss", forward, inputs, rows, width, protos, plain[0])


def build(op: str, impl: str, rows: int, width: int, protos: int, dtype: torch.dtype, device: torch.device) -> Cases:
    if op == "loss":
        return loss_cases(impl, rows, width, dtype, device)
    builder = head_cases if op == "head" else head_loss_cases
    return builder(impl, rows, width, protos, dtype, device)


def grid(device: torch.device, quick: bool) -> Iterator[tuple[str, str, int, int, int, str]]:
    """(op, impl, B, d or D, K, dtype name) to run on this device."""
    on_gpu = device.type == "cuda"
    batches = [256, 4096] if quick else [256, 4096, 65536]
    impls = ["torch", "compile"] + (["triton"] if on_gpu and triton_available() else [])
    for dtype in DTYPES:
        for rows in batches:
            for cols in [5, 101, 1000]:
                for impl in (["released"] if rows == 256 else []) + impls:
                    yield "loss", impl, rows, cols, 0, dtype
            for op in ("head", "head+loss"):
                for width in [512, 768]:
                    for protos in [5, 101]:
                        for impl in impls:
                            yield op, impl, rows, width, protos, dtype
