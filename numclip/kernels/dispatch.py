"""Which implementation runs: Triton on CUDA tensors when triton imports, the PyTorch path otherwise.

`impl="triton"` forces the kernel (on CPU it then needs TRITON_INTERPRET=1, set before triton is
imported, which is how the tests run it); "torch" is the eager reference; "compile" is torch.compile
of the reference.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable, Literal

import torch

Impl = Literal["auto", "triton", "torch", "compile"]
IMPLS = ("auto", "triton", "torch", "compile")


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(impl: str, *tensors: torch.Tensor) -> str:
    """The concrete implementation for these inputs."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got '{impl}'")
    if impl == "auto":
        on_cuda = all(t.is_cuda for t in tensors)
        return "triton" if on_cuda and triton_available() else "torch"
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
