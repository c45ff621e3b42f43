"""What the hostile-input tests share (issue 16): a deadline that turns a hang into a failure, the
one-line-error checks, and generators of special files, JSON shapes and damaged safetensors files
that several input families reuse."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from numclip.cli import main
from numclip.core.errors import NumclipError

SECONDS = 20  # the bound on any one variant: a hang fails the test instead of stalling CI
K = 5


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float = SECONDS):
    """Raise Hang in the main thread if the block takes longer (interrupts a blocking open())."""
    def stop(*_):
        raise Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_line_error(call, *needles: str, what: str = "") -> str:
    """`call()` raises NumclipError within the deadline, with a one-line message holding `needles`."""
    with deadline():
        try:
            call()
        except NumclipError as e:
            message = str(e)
        else:
            pytest.fail(f"{what or needles}: no error")
    assert "\n" not in message, (what, message)
    for needle in needles:
        assert needle in message, (what, needle, message)
    return message


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    """The CLI exits with 2 and prints one line naming `needles`, without a traceback."""
    with deadline():
        code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (code, err)
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def special_files(folder: Path, suffix: str) -> dict[str, Path]:
    """Things that are not regular files but carry a file's name: pipes, sockets, devices, links."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    made["fifo"] = folder / f"pipe{suffix}"
    os.mkfifo(made["fifo"])
    made["socket"] = folder / f"sock{suffix}"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(made["socket"]))
    sock.close()
    made["device"] = folder / f"zero{suffix}"
    made["device"].symlink_to("/dev/zero")
    made["link to fifo"] = folder / f"tofifo{suffix}"
    made["link to fifo"].symlink_to(made["fifo"].name)
    made["broken link"] = folder / f"broken{suffix}"
    made["broken link"].symlink_to("nowhere")
    made["link loop"] = folder / f"loop{suffix}"
    made["link loop"].symlink_to(made["link loop"].name)
    made["directory"] = folder / f"folder{suffix}"
    made["directory"].mkdir()
    return made


def write_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def safetensors_contents(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return load_file(str(path)), f.metadata()


def json_shapes() -> typing.Iterator[tuple[str, str]]:
    """Metadata texts that are not the JSON object a card is."""
    yield "not JSON", "{model: 1"
    yield "empty", ""
    yield "a list", "[1, 2]"
    yield "a string", '"card"'
    yield "null", "null"
    yield "deep lists", "[" * 100_000 + "]" * 100_000
    yield "deep objects", '{"a":' * 100_000 + "1" + "}" * 100_000
    yield "65 levels", '{"a":' * 65 + "1" + "}" * 65


def damaged_safetensors(good: Path, root: Path, special: bool = True) -> typing.Iterator[tuple[str, Path]]:
    """The file cut at offsets through its header and its data, and filled with noise."""
    data = good.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    for cut in (0, 4, 8, 8 + header // 2, 8 + header, 8 + header + 10, len(data) - 1):
        (root / f"cut{cut}.safetensors").write_bytes(data[:cut])
        yield f"cut at {cut}", root / f"cut{cut}.safetensors"
    (root / "noise.safetensors").write_bytes(random.Random(1).randbytes(4096))
    yield "noise", root / "noise.safetensors"
    (root / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    yield "a header claiming a terabyte", root / "huge-header.safetensors"
    if special:
        yield from special_files(root / "special", ".safetensors").items()
