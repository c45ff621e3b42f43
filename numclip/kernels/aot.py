"""Ahead-of-time compile check of every Triton kernel for sm_80 (Ampere) and sm_90 (Hopper), with no GPU.

`compile_cases` lists every configuration the launchers can pick, built from their own `tile_configs`,
`head_configs`, `block_k` and `dot_precision`; `compile_report` compiles one and reads ptxas's `-v` log
(registers, spills) and the SASS (tensor-core, FFMA ops); `problems` names a spill, a `tl.dot` without
tensor-core ops, or too much shared memory. `check_all` compiles in spawned workers, with TRITON_INTERPRET
(the test suite's; `triton.jit` then makes interpreter functions, which do not compile) removed before
triton is imported, a fresh TRITON_CACHE_DIR, and `always_compile`: every report is a real ptxas run.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

ARCHS = (80, 90)
# The shared memory one block may use (the opt-in maximum in the CUDA programming guide): 163 KiB on
# sm_80 (A100), 227 KiB on sm_90 (H100). Triton refuses to launch a kernel over it (OutOfResources).
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class CompileCase:
    """One kernel specialisation, as `triton.compile(ASTSource(...))` takes it."""
    name: str
    kernel: str  # "module:attribute", resolved where it is compiled (a JITFunction does not pickle)
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: Optional[int]  # None: Triton's default, as a launch that passes none
    has_dot: bool
    maxnreg: Optional[int] = None  # the launcher's register budget, if it passes one


@dataclass(frozen=True)
class Report:
    """What one compile produced for one architecture."""
    case: str
    arch: int
    registers: int
    spill_stores: int  # bytes, from ptxas -v
    spill_loads: int
    stack_bytes: int
    shared_bytes: int  # Triton's shared-memory allocation
    tensor_core_ops: Optional[int]  # SASS HMMA, plus HGMMA (wgmma) on sm_90; None: not disassembled
    wgmma_ops: Optional[int]
    ffma_ops: Optional[int]
    seconds: float

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads


def _param_types(dtype: str, has_target: bool = True) -> dict[str, str]:
    """The Triton type of every runtime parameter name the kernels use, for inputs of `dtype`."""
    groups = [("i32", "stride_vec up_stride n_rows n_cols_vec n_protos width stride_f stride_t"),
              ("fp32", "margin eps scale_value"),
              ("*fp32", "lse_ptr loss_ptr partial_ptr up_ptr scale_ptr f_norm_ptr t_norm_ptr col_ptr r_ptr"),
              (f"*{dtype}", "logits_ptr grad_ptr f_ptr t_ptr t_hat_ptr out_ptr df_ptr gs_ptr")]  # dtype may be fp32
    types = {name: kind for kind, names in groups for name in names.split()}
    types["target_ptr"] = "*i64" if has_target else "*fp32"  # without a target the launcher passes ‖f‖
    return types


def _case(name: str, kernel: str, types: dict[str, str], constexprs: dict[str, Any], num_warps: int,
          num_stages: Optional[int], has_dot: bool, maxnreg: Optional[int] = None) -> CompileCase:
    """A case whose signature follows the kernel's own parameter order (a parameter with no type is an error)."""
    module, _, attr = kernel.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    names = list(inspect.signature(getattr(fn, "fn", fn)).parameters)  # a JITFunction or an interpreted one
    missing = [n for n in names if n not in types and n not in constexprs]
    if missing or set(constexprs) - set(names):
        raise ValueError(f"{kernel}: no type for {missing}, or {sorted(set(constexprs) - set(names))} not parameters")
    signature = {n: "constexpr" if n in constexprs else types[n] for n in names}
    return CompileCase(name, kernel, signature, dict(constexprs), num_warps, num_stages, has_dot, maxnreg)


def ranking_case(kind: str, dt: str, tile, vec: int, fixed: bool = False, per_row: bool = False) -> CompileCase:
    """The ranking CE's forward ("fwd") or backward ("bwd") kernel as its launcher runs it with `tile`."""
    from numclip.kernels import ranking_ce as rc
    from numclip.losses.ranking import IGNORE_INDEX
    constexprs = dict(FIXED=fixed, IGNORE=IGNORE_INDEX, ROWS=tile.rows, BLOCK_D=tile.block_d, VEC=vec,
                      **({"PER_ROW": per_row} if kind == "fwd" else {}))
    name = f"ranking_{kind}/{dt}/{tile.name}/a{vec}" + "/fixed" * fixed + "/per_row" * per_row
    return _case(name, f"{rc.__name__}:_ranking_ce_{kind}_kernel", _param_types(dt), constexprs, tile.num_warps,
                 None, False, rc.MAX_REGISTERS)


def _ranking_cases(full: bool) -> list[CompileCase]:
    from numclip.kernels import ranking_ce as rc
    widths = [n for i in range(1, (2 * rc.MAX_BLOCK_D).bit_length()) for n in (1 << i, (1 << i) + 1)]
    tiles = list(dict.fromkeys(tile for n in widths for tile in rc.tile_configs(n)))
    variants = [(tile, "bf16", rc.row_alignment(16, DTYPES["bf16"].itemsize), False, False) for tile in tiles]  # widest
    if full:  # other dtypes and modes at realistic widths, aligned as a contiguous [B, d] tensor is
        variants += [(tile, dt, rc.row_alignment(d, DTYPES[dt].itemsize), fixed, per_row)
                     for d in (5, 101, 1000) for tile in rc.tile_configs(d)
                     for dt, fixed, per_row in (("fp32", False, False), ("fp16", False, False),
                                                ("bf16", True, False), ("bf16", False, True))]
    return [ranking_case(kind, dt, tile, vec, fixed, per_row) for tile, dt, vec, fixed, per_row in variants
            for kind in (("fwd",) if per_row else ("fwd", "bwd"))]  # the backward has no PER_ROW


def fp32_precisions() -> list[str]:
    """`dot_precision(float32)` under each `torch.set_float32_matmul_precision` setting, "highest" first."""
    from numclip.kernels.cosine import dot_precision
    saved, found = torch.get_float32_matmul_precision(), []
    try:
        for setting in ("highest", "high", "medium"):
            torch.set_float32_matmul_precision(setting)
            found.append(dot_precision(torch.float32))
    finally:
        torch.set_float32_matmul_precision(saved)
    return list(dict.fromkeys(found))


def _cosine_cases(full: bool) -> list[CompileCase]:
    from numclip.kernels import cosine as cs
    from numclip.losses.ranking import IGNORE_INDEX
    block_ks = sorted({cs.block_k(k) for k in range(1, cs.MAX_PROTOTYPES + 1)})
    bf16, fp16, fp32 = cs.dot_precision(torch.bfloat16), cs.dot_precision(torch.float16), fp32_precisions()
    variants = [(config, k, dt, precision, True) for k in block_ks
                for dt, precision in (("bf16", bf16), ("fp32", fp32[0]))
                for config in cs.head_configs(k, DTYPES[dt])]
    if full:  # the lighter and rarer variants, at the widest K only
        variants += [(config, block_ks[-1], dt, precision, has_ce)
                     for dt, precision, has_ce in [("fp16", fp16, True), *[("fp32", p, True) for p in fp32[1:]],
                                                   ("bf16", bf16, False)]
                     for config in cs.head_configs(block_ks[-1], DTYPES[dt])]
    cases = []
    for config, k, dt, precision, has_ce in variants:
        common = dict(SCALE_FROM_PTR=True, HAS_CE=has_ce, FIXED=False, IGNORE=IGNORE_INDEX, PRECISION=precision,
                      BLOCK_B=config.block_b, BLOCK_K=k, BLOCK_D=config.block_d)
        for kind, extra in (("fwd", {}), ("bwd", dict(HAS_GRAD=True, NEED_DF=True))):
            cases.append(_case(f"cosine_{kind}/{dt}-{precision}/{config.name}/k{k}" + "/ce" * has_ce,
                               f"{cs.__name__}:_cosine_{kind}_kernel", _param_types(dt, has_ce),
                               {**common, **extra}, config.num_warps, config.num_stages, True))
    return cases


def compile_cases(full: bool = True) -> list[CompileCase]:
    """Every configuration the launchers can pick; `full=False` keeps the main sweep (bf16 ranking CE over
    every tile, the heaviest cosine variants in bf16 and fp32) and leaves out the other dtypes and modes."""
    return _ranking_cases(full) + _cosine_cases(full)


def _compile(case: CompileCase, arch: int):
    """(compiled kernel, the log of Triton's own `ptxas -v` run, seconds) of `case` for sm_`arch`."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as compile_kernel
    from triton.runtime.jit import JITFunction

    module, _, attr = case.kernel.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"{case.kernel} is a {type(fn).__name__}, not a JITFunction: it was imported with "
                           f"TRITON_INTERPRET=1, which `triton.compile` cannot use")
    pointers = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(case.signature.values()) if kind[0] == "*"}
    source = ASTSource(fn, case.signature, constexprs=case.constexprs, attrs=pointers)  # as torch's allocations
    options = {"num_warps": case.num_warps, **({} if case.num_stages is None else {"num_stages": case.num_stages}),
               **({} if case.maxnreg is None else {"maxnreg": case.maxnreg})}
    log, start = io.StringIO(), time.perf_counter()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # a cache hit would run no ptxas, so print no log
        knobs.nvidia.dump_ptxas_log = True  # Triton prints the log of its own `ptxas -v` run
        kernel = compile_kernel(source, target=GPUTarget("cuda", arch, 32), options=options)
    return kernel, log.getvalue(), time.perf_counter() - start


def sass(kernel) -> str:
    """The SASS of a compiled kernel (cuobjdump from Triton's wheel)."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as file:
            file.write(kernel.asm["cubin"])
        return subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", path], check=True, capture_output=True,
                              text=True).stdout


def global_loads(case: CompileCase, arch: int) -> dict[str, int]:
    """How many global loads of each kind ("LDG.E.U16", "LDG.E.64", "LDG.E.128"…) `case` compiles to."""
    kernel, _, _ = _compile(case, arch)
    found: dict[str, int] = {}
    for op in re.findall(r"\bLDG\.E[.A-Z0-9]*", sass(kernel)):
        found[op] = found.get(op, 0) + 1
    return found


def compile_report(case: CompileCase, arch: int, sass_too: Optional[bool] = None) -> Report:
    """Compile `case` for sm_`arch` (80, 90) and read its resources; a compile error propagates. The SASS is
    read when `sass_too` says (by default for a kernel with a `tl.dot`: cuobjdump takes ~0.5 s a call)."""
    kernel, ptxas, seconds = _compile(case, arch)
    hmma = wgmma = ffma = None
    if case.has_dot if sass_too is None else sass_too:
        text = sass(kernel)
        hmma, wgmma, ffma = (len(re.findall(rf"\b{op}\b", text)) for op in ("HMMA", "HGMMA", "FFMA"))
    numbers = [re.search(pattern, ptxas) for pattern in (r"Used (\d+) registers", r"(\d+) bytes spill stores",
                                                         r"(\d+) bytes spill loads", r"(\d+) bytes stack frame")]
    if not all(numbers):
        raise RuntimeError(f"no registers, spills or stack frame in the ptxas log:\n{ptxas}")
    registers, spill_stores, spill_loads, stack = (int(number.group(1)) for number in numbers)
    return Report(case.name, arch, registers=registers, spill_stores=spill_stores, spill_loads=spill_loads,
                  stack_bytes=stack, shared_bytes=kernel.metadata.shared,
                  tensor_core_ops=None if hmma is None else hmma + (wgmma if arch >= 90 else 0), wgmma_ops=wgmma,
                  ffma_ops=ffma, seconds=seconds)


def problems(report: Report, case: CompileCase) -> list[str]:
    """What is wrong with a compiled case: a spill, a `tl.dot` without tensor-core ops, too much shared memory."""
    found = []
    if report.spill_bytes:
        found.append(f"spills {report.spill_bytes} bytes ({report.spill_stores} stored, {report.spill_loads} "
                     f"loaded; {report.registers} registers, {report.stack_bytes}-byte stack)")
    if case.has_dot and not report.tensor_core_ops:
        ops = "HMMA or HGMMA" if report.arch >= 90 else "HMMA"
        found.append(f"tl.dot has no tensor-core instruction ({ops}): {report.ffma_ops} FFMA")
    if report.shared_bytes > MAX_SHARED.get(report.arch, report.shared_bytes):
        found.append(f"needs {report.shared_bytes} bytes of shared memory, over sm_{report.arch}'s "
                     f"{MAX_SHARED[report.arch]} per block: it cannot launch")
    return found


def _compile_in_worker(case: CompileCase, arch: int) -> Report:
    """`compile_report`, with any error turned into a RuntimeError that pickles back to the parent."""
    try:
        return compile_report(case, arch)
    except Exception as error:  # Triton's errors need not pickle; their message is what matters
        raise RuntimeError(f"{type(error).__name__}: {str(error)[:2000]}") from None


@contextlib.contextmanager
def compiler_pool(max_workers: int = 2):
    """Spawned worker processes that can compile: TRITON_INTERPRET (the test suite's; `triton.jit` then
    makes interpreter functions, which do not compile) is removed before triton is imported, and Triton's
    cache is a fresh folder, deleted afterwards."""
    cache = tempfile.mkdtemp(prefix="numclip-aot-cache-")
    setup = f"import os; os.environ.pop('TRITON_INTERPRET', None); os.environ['TRITON_CACHE_DIR'] = {cache!r}"
    try:  # `exec` as the initializer: the worker runs it before unpickling anything that imports triton
        with ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("spawn"), initializer=exec,
                                 initargs=(setup,)) as pool:
            yield pool
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def check_all(cases: Optional[Sequence[CompileCase]] = None, archs: Sequence[int] = ARCHS,
              max_workers: int = 2) -> tuple[list[Report], list[str]]:
    """(reports, problems "case @ sm_XX: what") of every case (default `compile_cases()`) for every arch, in
    spawned workers; a compile error is a problem. The workers re-import a calling script (`__main__`): it
    must keep its work under `if __name__ == "__main__":` and not set TRITON_INTERPRET=1 on import."""
    jobs = [(case, arch) for arch in archs for case in (compile_cases() if cases is None else cases)]
    reports, found = [], []
    with compiler_pool(max_workers) as pool:
        futures = [pool.submit(_compile_in_worker, case, arch) for case, arch in jobs]
        for done, ((case, arch), future) in enumerate(zip(jobs, futures)):
            try:
                reports.append(future.result())
            except BrokenProcessPool:  # a worker died (a crash in the compiler): nothing more can run
                found.append(f"{case.name} @ sm_{arch}: a worker died (on this case or one beside it); "
                             f"{len(jobs) - done} compiles not run")
                break
            except Exception as error:  # every failure is reported with its case
                found.append(f"{case.name} @ sm_{arch}: compile failed: {error}")
                continue
            found += [f"{case.name} @ sm_{arch}: {problem}" for problem in problems(reports[-1], case)]
    return reports, found

