"""Which implementation runs, and the measured choice that keeps `impl="auto"` never slower than eager.

`impl="triton"` forces the kernel (on CPU it then needs TRITON_INTERPRET=1, set before triton is
imported, which is how the tests run it); "torch" is the eager reference; "compile" is torch.compile
of the reference. `impl="auto"` runs the PyTorch path on CPU; on CUDA it times the candidates a few
times on first use for a (device, op, dtype, shape bucket), keeps the faster one in memory and in a
JSON file under the user's cache folder (keyed by device name and versions), and reuses it after.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal, Sequence, TypeVar

import torch

Impl = Literal["auto", "triton", "torch", "compile"]
IMPLS = ("auto", "triton", "torch", "compile")
CHOICES_FILE = "kernel-choices.json"


try:
    import triton

    TRITON_VERSION = triton.__version__
except ImportError:  # a CPU-only torch build ships no triton
    TRITON_VERSION = None


def triton_available() -> bool:
    return TRITON_VERSION is not None


def triton_version() -> str:
    return TRITON_VERSION or "none"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(impl: str, *tensors: torch.Tensor) -> str:
    """The implementation asked for, checked against these inputs ("auto" stays "auto" on CUDA, where
    `MeasuredChoice` settles it, and becomes "torch" elsewhere)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got '{impl}'")
    if impl == "auto":
        on_cuda = all(t.is_cuda for t in tensors)
        return "auto" if on_cuda and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs the triton package")
        if not all(t.is_cuda for t in tensors) and not interpreting():
            raise RuntimeError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton)")
    return impl


@lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """torch.compile of a reference function, built once per function."""
    return torch.compile(fn, dynamic=True)


def shape_bucket(rows: int) -> int:
    """Batch sizes share a timing within a power of two."""
    return 1 << max(rows - 1, 0).bit_length()


def cache_folder() -> Path:
    """$NUMCLIP_CACHE_DIR, else $XDG_CACHE_HOME/numclip, else ~/.cache/numclip."""
    if os.environ.get("NUMCLIP_CACHE_DIR"):
        return Path(os.environ["NUMCLIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numclip"


@lru_cache(maxsize=None)
def device_name(device: torch.device) -> str:
    """The GPU's name (asked of the driver once per device: every `auto` call builds a key with it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def default_timer(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds of a few runs (`triton.testing.do_bench` on CUDA)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=5, rep=20))
    fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


class MeasuredChoice:
    """Times named candidates once per key and remembers the fastest (in memory and on disk)."""

    def __init__(self, path: Path | None = None,
                 timer: Callable[[Callable[[], object], torch.device], float] = default_timer) -> None:
        self.path = path
        self.timer = timer
        self.choices: dict[str, dict] | None = None

    def _file(self) -> Path:
        return self.path or cache_folder() / CHOICES_FILE

    def _load(self) -> dict[str, dict]:
        if self.choices is None:
            try:
                loaded = json.loads(self._file().read_text(encoding="utf-8"))
                self.choices = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):  # no file yet, or a damaged one: measure again
                self.choices = {}
        return self.choices

    def _save(self) -> None:
        path = self._file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.choices, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only home still gets the in-memory choice
            pass

    @staticmethod
    def key(op: str, device: torch.device, dtype: torch.dtype, *shape: int) -> str:
        versions = f"torch {torch.__version__}, triton {triton_version()}"
        return f"{op} | {device_name(device)} | {versions} | {str(dtype).removeprefix('torch.')} | " \
               + "x".join(map(str, shape))

    def choose(self, key: str, candidates: dict[str, Callable[[], object]], device: torch.device) -> str:
        """The remembered choice for `key`, or the fastest candidate, timed now."""
        choices = self._load()
        known = choices.get(key, {}).get("choice")
        if known in candidates:
            return known
        times = {name: self.timer(fn, device) for name, fn in candidates.items()}
        best = min(times, key=times.get)
        choices[key] = {"choice": best, "ms": {name: round(ms, 5) for name, ms in times.items()}}
        self._save()
        return best

    def table(self) -> dict[str, dict]:
        """Every remembered choice: key -> {"choice", "ms"} (what `numclip bench` prints)."""
        return dict(self._load())


MEASURED = MeasuredChoice()
Config = TypeVar("Config")


def on_device(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not the current one (`--device cuda:1` in a single process)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else nullcontext()


def _forward_backward(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[[], object]:
    """One timed step of a candidate: forward on copies of the inputs, and backward where they need it
    (the copies are made when it runs, so a remembered choice costs no tensor work)."""
    grad = torch.is_grad_enabled()

    def step():
        copies = [x.detach().requires_grad_(x.requires_grad and grad) for x in inputs]
        out = fn(*copies)
        if any(x.requires_grad for x in copies):
            torch.autograd.grad(out.float().sum(), [x for x in copies if x.requires_grad])
    return step


def settle(impl: str, op: str, inputs: Sequence[torch.Tensor], others: Sequence[torch.Tensor],
           candidates: dict[str, Callable[..., torch.Tensor]]) -> str:
    """The implementation to run: `impl` checked, and "auto" on CUDA made the measured winner of
    `candidates` (each called with the differentiable `inputs`; under torch.compile, Triton untimed)."""
    chosen = resolve(impl, *inputs, *others)
    if chosen != "auto":
        return chosen
    if torch.compiler.is_compiling():
        return "triton"
    like = inputs[0]
    key = MeasuredChoice.key(op, like.device, like.dtype, shape_bucket(like.shape[0]), *like.shape[1:],
                             *(size for x in inputs[1:] for size in x.shape))
    timed = {name: _forward_backward(fn, inputs) for name, fn in candidates.items()}
    return MEASURED.choose(key, timed, like.device)


def pick(op: str, like: torch.Tensor, configs: Sequence[Config], run: Callable[[Config], object]) -> Config:
    """A kernel's launch configuration: the fastest of `configs` for this shape on CUDA (timed once,
    remembered like the implementations), the first one elsewhere (the interpreter has no timer)."""
    if len(configs) == 1 or not like.is_cuda:
        return configs[0]
    key = MeasuredChoice.key(op, like.device, like.dtype, shape_bucket(like.shape[0]), *like.shape[1:])
    names = {str(getattr(config, "name", config)): config for config in configs}
    return names[MEASURED.choose(key, {name: (lambda c=c: run(c)) for name, c in names.items()}, like.device)]
