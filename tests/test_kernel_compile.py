"""Ahead-of-time compile check of every Triton kernel for sm_80 (Ampere) and sm_90 (Hopper), with no GPU.

Every launch configuration (`numclip.kernels.aot.compile_cases`) is compiled for both architectures in
two worker processes, and the test fails listing every case that spills registers, runs a `tl.dot`
without tensor-core instructions, needs more shared memory than a block may have, or does not compile.
It takes minutes on two cores; NUMCLIP_AOT_FULL=0 compiles only the main sweep. Skipped where there is no
triton (a CPU-only torch wheel ships none).
"""

import os
import time

import pytest
import torch

pytest.importorskip("triton")

from numclip.kernels import aot  # noqa: E402


def _table(reports) -> str:
    """Per kernel and arch: max registers, spilling cases, max spill and shared bytes, min tensor-core ops,
    cases using HGMMA ("-": not disassembled, a kernel with no tl.dot), and the compile seconds summed."""
    groups = {}
    for report in reports:
        groups.setdefault((report.case.split("/", 1)[0], report.arch), []).append(report)
    rows = [("kernel", "arch", "cases", "regs", "spilling", "max_spill", "max_smem", "min_TC", "HGMMA", "seconds")]
    rows += [(kernel, f"sm_{arch}", len(g), max(r.registers for r in g), sum(r.spill_bytes > 0 for r in g),
              max(r.spill_bytes for r in g), max(r.shared_bytes for r in g),
              min((r.tensor_core_ops for r in g if r.tensor_core_ops is not None), default="-"),
              sum(bool(r.wgmma_ops) for r in g) if g[0].wgmma_ops is not None else "-",
              f"{sum(r.seconds for r in g):.1f}")
             for (kernel, arch), g in sorted(groups.items())]
    return "\n".join(f"{row[0]:<12}" + "".join(f"{cell:>10}" for cell in row[1:]) for row in rows)


def test_cases_cover_every_kernel_and_config():
    cases = aot.compile_cases()
    assert len({case.name for case in cases}) == len(cases)
    assert {case.name.split("/", 1)[0] for case in cases} == {"ranking_fwd", "ranking_bwd", "cosine_fwd",
                                                              "cosine_bwd"}
    from numclip.kernels.cosine import head_configs
    from numclip.kernels.ranking_ce import tile_configs
    names = {case.name for case in cases}
    for tile in tile_configs(5) + tile_configs(10_000):
        assert any(f"/{tile.name}/" in name for name in names), tile
    for k in (16, 32, 64, 128):
        for config in head_configs(k, torch.float32):
            assert any(f"/{config.name}/k{k}" in name and "tf32x3" in name for name in names), config
    assert all(case.has_dot == case.name.startswith("cosine") for case in cases)


def test_problems_names_spills_missing_tensor_cores_and_shared_memory():
    dot = aot.CompileCase("cosine_fwd/x", "m:f", {}, {}, 4, 3, True)
    clean = aot.Report("cosine_fwd/x", 90, 200, 0, 0, 0, 1024, 4, 4, 10, 1.0)
    assert aot.problems(clean, dot) == []
    spilled = aot.Report("cosine_fwd/x", 80, 255, 8, 4, 16, 1024, 4, 0, 10, 1.0)
    assert any("spills 12 bytes" in problem for problem in aot.problems(spilled, dot))
    ffma_dot = aot.Report("cosine_fwd/x", 80, 128, 0, 0, 0, 1024, 0, 0, 512, 1.0)
    assert any("no tensor-core" in problem for problem in aot.problems(ffma_dot, dot))
    big = aot.Report("cosine_fwd/x", 80, 128, 0, 0, 0, aot.MAX_SHARED[80] + 1, 4, 0, 10, 1.0)
    assert any("shared memory" in problem for problem in aot.problems(big, dot))


def test_aligned_rows_load_vectors():
    """The launcher's VEC hint turns the ranking CE's 2-byte loads into vector loads where rows allow it."""
    from numclip.kernels.ranking_ce import tile_configs, vector_width
    tile = tile_configs(1000)[0]
    aligned = vector_width(torch.empty(4, 1000, dtype=torch.bfloat16))
    odd = vector_width(torch.empty(4, 1001, dtype=torch.bfloat16))
    assert (aligned, odd) == (8, 1)
    with aot.compiler_pool(2) as pool:
        cases = [aot.ranking_case("fwd", "bf16", tile, vec) for vec in (aligned, odd)]
        wide, narrow = pool.map(aot.global_loads, cases, [90, 90])
    assert "LDG.E.U16" in narrow and "LDG.E.U16" not in wide, (wide, narrow)


def test_every_kernel_compiles_for_ampere_and_hopper():
    cases = aot.compile_cases(full=os.environ.get("NUMCLIP_AOT_FULL", "1") != "0")
    start = time.perf_counter()
    reports, problems = aot.check_all(cases, aot.ARCHS, max_workers=2)
    elapsed = time.perf_counter() - start
    table = f"{len(cases)} cases x {len(aot.ARCHS)} archs, {elapsed:.0f} s wall\n{_table(reports)}"
    print(table)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems) + f"\n\n{table}"
