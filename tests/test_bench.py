"""`numclip bench` pieces on tiny shapes: every timed case runs, the timer's quantiles are ordered,
the CPU grid holds only what runs on CPU, the plot is written, the roofline model counts what it
says, and the printed lines label the estimates as estimates."""

import csv

import pytest
import torch

from numclip.cli import main
from numclip.commands.bench import case_line, choice_lines, model_markdown, model_rows, plot, run, time_ms
from numclip.commands.bench_cases import grid, head_cases, head_loss_cases, loss_cases
from numclip.kernels import cosine_ranking_reference
from numclip.kernels.roofline import (
    ESTIMATE_LABEL,
    PASSES,
    PEAKS,
    Cost,
    achieved,
    bound,
    costs,
    device_peak,
    estimate_ms,
)

CPU = torch.device("cpu")


def test_timer_quantiles_are_ordered():
    median, p20, p80 = time_ms(lambda: torch.ones(100).sum(), CPU, budget_s=0.05)
    assert 0 < p20 <= median <= p80


def test_every_case_runs_and_moves_bytes():
    for impl in ("released", "torch"):
        cases = loss_cases(impl, 8, 5, torch.float32, CPU)
        assert set(cases) == set(PASSES)
        for fn, cost in cases.values():
            fn()
            assert cost.bytes > 0 and cost.flops > 0
    released = loss_cases("released", 8, 5, torch.float32, CPU)["forward"][0]()
    vectorised = loss_cases("torch", 8, 5, torch.float32, CPU)["forward"][0]()
    assert released.shape == vectorised.shape == ()
    for fn, cost in head_cases("torch", 8, 16, 5, torch.bfloat16, CPU).values():
        fn()
        assert cost.bytes > 0


def test_head_loss_cases_run_the_eager_chain_on_cpu():
    cases = head_loss_cases("torch", 8, 16, 5, torch.float32, CPU)
    assert set(cases) == set(PASSES)
    torch.manual_seed(0)
    loss = cases["forward"][0]()
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    grads = cases["forward+backward"][0]()
    assert len(grads) == 3 and grads[0].shape == (8, 16) and grads[1].shape == (5, 16)
    assert all(torch.isfinite(g).all() for g in grads)
    assert cases["forward"][1] == costs("head+loss", 8, 16, 5, 4)["forward"]
    f, t, y = torch.randn(8, 16), torch.randn(5, 16), torch.randint(0, 5, (8,))
    reference, logits = cosine_ranking_reference(f, t, torch.tensor(100.0), y, "faithful", 1.0)
    assert logits.shape == (8, 5) and reference.shape == ()


def test_cpu_grid_and_plot(tmp_path):
    cases = list(grid(CPU, quick=True))
    assert {c[1] for c in cases} == {"released", "torch", "compile"}, "no Triton without a GPU"
    assert max(c[2] for c in cases) == 4096 and all(c[1] != "released" or c[2] == 256 for c in cases)
    fused = [c for c in cases if c[0] == "head+loss"]
    assert {c[1] for c in fused} == {"torch", "compile"}
    assert {c[2:] for c in fused} == {c[2:] for c in cases if c[0] == "head" and c[1] in ("torch", "compile")}
    rows = [{"op": "loss", "impl": impl, "pass": "forward+backward", "B": b, "d_or_D": 5, "K": "", "dtype": "fp32",
             "median_ms": ms} for impl, b, ms in (("torch", 256, 1.0), ("torch", 4096, 3.0), ("released", 256, 50.0))]
    plot(rows, tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 5000


def test_cost_model_counts():
    for op, width, protos in (("loss", 101, 0), ("head", 512, 101), ("head+loss", 512, 101)):
        small, large = costs(op, 1024, width, protos, 2), costs(op, 4096, width, protos, 2)
        for step in PASSES:
            # linear in B, up to the B-independent prototype terms
            fixed = 2 * small[step].bytes - costs(op, 2048, width, protos, 2)[step].bytes
            assert large[step].bytes == 4 * small[step].bytes - 3 * fixed
            assert large[step].flops > small[step].flops > 0
        assert small["forward+backward"] == small["forward"] + small["backward"]
    b, d, k = 4096, 768, 101
    head = costs("head", b, d, k, 2)
    assert head["forward"].matmul_flops == 2 * b * k * d and head["backward"].matmul_flops == 4 * b * k * d
    assert head["forward"].bytes == (b * d + k * d + b * k) * 2 + 4 * (b + k)  # in, logits and norms out
    assert costs("loss", b, 101, 0, 4)["forward"].bytes == b * 101 * 4 + b * (8 + 4)
    fused = costs("head+loss", b, d, k, 2)
    assert fused["forward"].bytes == head["forward"].bytes + b * (8 + 4)  # targets in, logsumexp out
    assert fused["backward"].bytes == head["backward"].bytes - b * k * 2 + b * (8 + 4)  # no upstream logits grad
    with pytest.raises(ValueError):
        costs("gemm", 1, 1, 1, 4)


def test_estimates_and_shares():
    for op, width, protos, dtype, size in (("loss", 101, 0, "fp32", 4), ("loss", 1000, 0, "bf16", 2),
                                            ("head", 512, 101, "bf16", 2), ("head+loss", 768, 101, "bf16", 2)):
        for cost in costs(op, 65536, width, protos, size).values():
            h100, h200 = estimate_ms(cost, PEAKS["H100"], dtype), estimate_ms(cost, PEAKS["H200"], dtype)
            assert bound(cost, PEAKS["H100"], dtype) == "memory"
            assert 0 < h200 < h100 and h100 == pytest.approx(cost.bytes / 3.35e12 * 1e3)
    gemm = Cost(bytes=10**6, flops=10**13, matmul_flops=10**13)  # compute bound
    assert estimate_ms(gemm, PEAKS["H100"], "bf16") == pytest.approx(1e13 / 989e12 * 1e3)
    assert estimate_ms(gemm, PEAKS["H100"], "fp32") == pytest.approx(2 * estimate_ms(gemm, PEAKS["H100"], "bf16"))
    bw, compute = achieved(gemm, 2 * estimate_ms(gemm, PEAKS["H200"], "bf16"), PEAKS["H200"], "bf16")
    assert compute == pytest.approx(0.5) and 0 < bw < compute
    assert device_peak("NVIDIA H200", 1.0) is PEAKS["H200"] and device_peak("NVIDIA A100-SXM4-80GB", 1.0).tensor
    unknown = device_peak("NVIDIA L4", 250.0)
    assert unknown.bandwidth == 250e9 and achieved(gemm, 1.0, unknown, "bf16")[1] is None


def test_printed_lines_label_the_estimates(tmp_path, capsys):
    lines: list[str] = []
    out = run(tmp_path, log=lines.append, budget_s=0.01,
              cases=[("loss", "torch", 8, 5, 0, "fp32"), ("head+loss", "torch", 8, 16, 5, "bf16")])
    assert any(line.startswith(ESTIMATE_LABEL) for line in lines)
    case = next(line for line in lines if line.startswith("head+loss"))
    assert "fwd+bwd" in case and "est. H100" in case and "est. H200" in case and " ms |" in case
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(PASSES) and rows[-1]["op"] == "head+loss"
    assert int(rows[-1]["bytes"]) == costs("head+loss", 8, 16, 5, 2)["forward+backward"].bytes
    assert float(rows[0]["est_h200_ms"]) <= float(rows[0]["est_h100_ms"])
    assert rows[0]["roofline_ms"] == rows[0]["bw_share"] == "", "no device roofline on CPU"
    on_gpu = dict(rows[0], bytes=int(rows[0]["bytes"]), flops=int(rows[0]["flops"]), B=8, d_or_D=5, median_ms=0.01,
                  roofline_ms=0.002, bw_share=0.2, compute_share=0.01)
    assert "20.0% of bandwidth, 1.0% of compute" in case_line(on_gpu, PEAKS["H100"])
    table = {"k": {"choice": "triton", "ms": {"triton": 0.1, "torch": 0.3}}}
    assert choice_lines({}) == [] and choice_lines(table)[1] == "  k -> triton (triton 0.1 ms, torch 0.3 ms)"

    assert main(["bench", "--model"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(ESTIMATE_LABEL) and printed.strip().endswith(model_markdown().splitlines()[-1])
    rows = model_rows()
    assert {(r["op"], r["d or D"], r["dtype"]) for r in rows} == {
        *(("loss", d, dt) for d in (5, 101, 1000) for dt in ("fp32", "bf16")),
        *((op, w, "bf16") for op in ("head", "head+loss") for w in (512, 768))}
    assert all(r["B"] == 65536 and float(r["est. H200 µs"]) <= float(r["est. H100 µs"]) for r in rows)
    assert len(rows) == 10 * len(PASSES) and len(model_markdown().splitlines()) == 2 + len(rows)


def test_docs_hold_the_generated_model_table():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "kernels.md").read_text(encoding="utf-8")
    assert model_markdown() in docs, "regenerate the table in docs/kernels.md with `numclip bench --model`"
    assert "estimates (roofline lower bounds), not measurements" in docs


def test_step_share_of_the_head_and_loss(tmp_path):
    """`bench --step` pieces: a tiny-model step on CPU, and the head + loss timed alone on its features."""
    from numclip.commands.bench_step import step_share

    row = step_share(CPU, "numclip-tiny", batch=4, protos=7, budget_s=0.01)
    assert row["step_ms"] > row["head_loss_ms"] > 0 and row["D"] == 128
    assert row["head_loss_share"] == round(row["head_loss_ms"] / row["step_ms"], 5)
