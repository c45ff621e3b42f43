"""`numclip bench` pieces on tiny shapes: every timed case runs, the timer's quantiles are ordered,
the CPU grid holds only what runs on CPU, and the plot is written."""

import torch

from numclip.commands.bench import PASSES, grid, head_cases, loss_cases, plot, time_ms

CPU = torch.device("cpu")


def test_timer_quantiles_are_ordered():
    median, p20, p80 = time_ms(lambda: torch.ones(100).sum(), CPU, budget_s=0.05)
    assert 0 < p20 <= median <= p80


def test_every_case_runs_and_moves_bytes():
    for impl in ("released", "torch"):
        cases = loss_cases(impl, 8, 5, torch.float32, CPU)
        assert set(cases) == set(PASSES)
        for fn, moved in cases.values():
            fn()
            assert moved > 0
    released = loss_cases("released", 8, 5, torch.float32, CPU)["forward"][0]()
    vectorised = loss_cases("torch", 8, 5, torch.float32, CPU)["forward"][0]()
    assert released.shape == vectorised.shape == ()
    for fn, moved in head_cases("torch", 8, 16, 5, torch.bfloat16, CPU).values():
        fn()
        assert moved > 0


def test_cpu_grid_and_plot(tmp_path):
    cases = list(grid(CPU, quick=True))
    assert {c[1] for c in cases} == {"released", "torch", "compile"}, "no Triton without a GPU"
    assert max(c[2] for c in cases) == 4096 and all(c[1] != "released" or c[2] == 256 for c in cases)
    rows = [{"op": "loss", "impl": impl, "pass": "forward+backward", "B": b, "d_or_D": 5, "K": "", "dtype": "fp32",
             "median_ms": ms} for impl, b, ms in (("torch", 256, 1.0), ("torch", 4096, 3.0), ("released", 256, 50.0))]
    plot(rows, tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 5000
