"""Shared fixtures: the tiny backbone is built once per session (random init, no download).

Triton kernels run under the interpreter on CPU (TRITON_INTERPRET must be set before triton is
imported); NUMCLIP_TEST_DEVICE=cuda runs the kernel tests natively on a GPU instead.
"""

import os
import socket

if os.environ.get("NUMCLIP_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _exact_bf16_dot_in_interpreter() -> None:
    """Triton 3.8's interpreter multiplies bf16 tiles as their raw uint16 bits (numpy has no bf16), so
    a bf16 `tl.dot` gives garbage there. The test helper, not the kernel, upcasts the operands to fp32
    first: exact, as a tensor core's products are, so the kernels' bf16 dot path itself is what runs."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    import triton.language as tl

    original = interpreter.InterpreterBuilder.create_dot
    if getattr(original, "numclip_patched", False):
        return

    def upcast(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view("float32")
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, upcast(a), upcast(b), d, input_precision, max_num_imprecise_acc)

    create_dot.numclip_patched = True
    interpreter.InterpreterBuilder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _exact_bf16_dot_in_interpreter()

import pytest  # noqa: E402

pytest.register_assert_rewrite("prefect_server")  # a plugin of test_flows that it also imports from
import torch  # noqa: E402

from numclip.config import ModelConfig  # noqa: E402
from numclip.models.backbone import create_backbone  # noqa: E402


@pytest.fixture(scope="session")
def tiny_backbone():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(arch="numclip-tiny"))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server or a rendezvous the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_pipeline(dst) -> None:
    """The project's dvc.yaml and params.yaml in `dst`: what `numclip run` needs to find the stages."""
    import shutil

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(os.path.join(REPO, name), os.path.join(dst, name))
