"""Atomic artifacts (issue 9, point 2): SIGKILL a process that rewrites an artifact in a loop, at a seeded
random point of a write, and the target is always one complete version (byte for byte), never a partial one.

Each writer is numclip's own: `write_json` (metrics), `write_csv` (plot data, predictions),
`write_manifest` (Parquet), `save_prototypes` and `save_model` (safetensors) and `save_figure` (PNG).
A deliberately non-atomic writer, run through the same harness, must be caught leaving a partial file:
that is what shows the kills land mid-write.

This file is also the helper process (`python tests/test_atomic_kill.py`): it imports the writers
once and forks one looping writer per kill, so a kill costs a few writes rather than a torch import.
Protocol, one line each way: `refs NAME DIR` -> `ok` (both versions written to DIR/v0, DIR/v1);
`loop NAME TARGET` -> the forked writer says `ready PID` once TARGET holds version 0;
`reap PID` -> `reaped PID SIGNAL`.
"""

from __future__ import annotations

import functools
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from safetensors.torch import load_file

from numclip.config import method_config
from numclip.core.atomic import atomic_path, write_csv, write_json
from numclip.data.manifest import Manifest, ManifestRow, read_manifest, write_manifest
from numclip.evaluation.plots import save_figure
from numclip.models.card import BackboneCard, ModelCard
from numclip.models.head import load_head, save_prototypes
from numclip.models.ordinal import read_model_card, save_model

REPO = Path(__file__).resolve().parents[1]
KILLS = 6  # per writer; each kill is a fresh forked writer killed at a seeded random moment
ROWS = 40_000  # CSV / manifest / JSON rows: 1-3 MB, so one write takes milliseconds, not microseconds

# --- the two versions of each artifact (built once in the helper, shared by its forked writers) ---


@functools.cache
def _rows(v: int) -> list[list[str]]:
    return [[f"img_{v}_{i:06d}.png", str(i % 10), f"{(i * 7919 + v) % 1000 / 1000:.3f}"] for i in range(ROWS)]


@functools.cache
def _manifest(v: int, images_root: Path) -> Manifest:
    splits = ("train", "val", "test")
    return Manifest([ManifestRow(path=p, label=int(label), split=splits[i % 3], caption=f"{label} dogs v{v}",
                                 source_row=f"row:{i}") for i, (p, label, _) in enumerate(_rows(v))],
                    images_root=images_root, num_ranks=10)


@functools.cache
def _prototypes(v: int) -> torch.Tensor:
    return torch.randn(1000, 1024, generator=torch.Generator().manual_seed(v))  # 4 MB of float32


class _Checkpoint(torch.nn.Module):
    """Stands in for a RankPromptModel (the real one is 50 MB): `save_model` needs only `state_dict` and `card`."""

    def __init__(self, v: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(1024, 1024, generator=torch.Generator().manual_seed(10 + v)))
        self.register_buffer("step", torch.tensor(v))
        words = [str(k) for k in range(10)]
        self.card = ModelCard(numclip_version="test", method="coop", method_config=method_config(learner="plain"),
                              model=BackboneCard(arch="numclip-tiny"), num_ranks=10, rank_words=words,
                              prompt_words=words, zeroshot_template="{}")


@functools.cache
def _checkpoint(v: int) -> _Checkpoint:
    return _Checkpoint(v)


@functools.cache
def _figure(v: int) -> Figure:
    fig = Figure(figsize=(4, 4), dpi=100)
    noise = np.random.default_rng(v).random((400, 400))  # incompressible: a 0.3 MB PNG
    fig.add_subplot().imshow(noise, interpolation="nearest")
    return fig


def _plain(target: Path, v: int) -> None:
    """The control: what atomic_path prevents (truncate the target, then fill it in flushed chunks)."""
    data = _plain_bytes(v)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        for start in range(0, len(data), 1 << 14):
            f.write(data[start:start + (1 << 14)])
            f.flush()


@functools.cache
def _plain_bytes(v: int) -> bytes:
    return json.dumps({"version": v, "rows": _rows(v)}).encode()


WRITERS: dict[str, Callable[[Path, int], None]] = {
    "json": lambda t, v: write_json(t, {"version": v, "rows": _rows(v)}),
    "csv": lambda t, v: write_csv(t, ["path", "label", "score"], _rows(v)),
    "manifest": lambda t, v: write_manifest(_manifest(v, t.parent.parent / "images"), t),
    "prototypes": lambda t, v: save_prototypes(t, _prototypes(v), 30.0 + v, {"method": "numclip_fixed"}),
    "checkpoint": lambda t, v: save_model(_checkpoint(v), t, extra={"best_epoch": v}),
    "png": lambda t, v: save_figure(_figure(v), t),
    "plain": _plain,
}

# Each version must read back with numclip's (or the format's) own reader: the refs are real artifacts.
READERS: dict[str, Callable[[Path], object]] = {
    "json": lambda p: json.loads(p.read_text()),
    "csv": lambda p: p.read_text().splitlines()[ROWS],
    "manifest": read_manifest,
    "prototypes": load_head,
    "checkpoint": lambda p: (read_model_card(p), load_file(str(p))),
    "png": lambda p: Image.open(p).load(),
}

# --- the helper process ---


def _loop(name: str, target: Path) -> None:
    """Rewrite `target` until killed, alternating the two versions; say when the first is complete."""
    try:
        helper = os.getppid()
        WRITERS[name](target, 0)
        os.write(1, f"ready {os.getpid()}\n".encode())
        v = 1
        while os.getppid() == helper:  # orphaned (the test run died): stop
            WRITERS[name](target, v)
            v = 1 - v
    except BaseException as e:  # noqa: BLE001  tell the test, then die without running pytest's exit hooks
        os.write(1, f"error {e!r}\n".encode())
    os._exit(1)


def _serve() -> None:
    torch.set_num_threads(1)  # no thread pools before forking
    for line in sys.stdin:
        cmd, arg, *rest = line.split()
        if cmd == "refs":
            for v in (0, 1):
                WRITERS[arg](Path(rest[0]) / f"v{v}", v)
            print("ok", flush=True)
        elif cmd == "loop":
            sys.stdout.flush()
            if os.fork() == 0:
                _loop(arg, Path(rest[0]))
        elif cmd == "reap":
            _, status = os.waitpid(int(arg), 0)
            print(f"reaped {arg} {os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1}", flush=True)


# --- the test side ---


class Helper:
    """The helper process, with line reads that time out instead of hanging the suite."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=REPO, env=env)
        self._buf = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def read(self, timeout: float = 60.0) -> list[str]:
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("the atomic-kill helper did not answer")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"the atomic-kill helper exited ({self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        words = line.decode().split()
        assert words[0] != "error", f"a writer failed: {line.decode()}"
        return words

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def helper():
    h = Helper()
    yield h
    h.close()


def _writing(target: Path, sizes: set[int]) -> bool:
    """Is a write of `target` under way: a temporary beside it, or the target itself missing or not full size?"""
    try:
        return len(os.listdir(target.parent)) > 1 or os.stat(target).st_size not in sizes
    except FileNotFoundError:
        return True


def _until(target: Path, sizes: set[int], writing: bool, timeout: float = 20.0) -> float:
    """Poll (busily: a write can take a millisecond) until `_writing` is `writing`; when it became so."""
    deadline = time.monotonic() + timeout
    while _writing(target, sizes) != writing:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no write of {target} began or ended within {timeout} s")
    return time.monotonic()


def _kill_mid_write(pid: int, target: Path, sizes: set[int], rng: random.Random, writes: int = 100) -> None:
    """SIGKILL `pid` at a seeded random point of one of its writes of `target`.

    Serialising takes most of a loop for some writers (json.dumps, rendering a figure), and a write
    to the page cache can take a millisecond, so a kill at a uniformly random time would rarely land
    in a write. Instead: wait for a write to begin (seen on the filesystem, the same way for atomic
    and in-place writers), draw a delay up to the last write's length, and kill then if that write
    is still under way; if it ended first, try again on the next write."""
    _until(target, sizes, writing=False)
    began = _until(target, sizes, writing=True)
    took = _until(target, sizes, writing=False) - began
    for _ in range(writes):
        began = _until(target, sizes, writing=True)
        deadline = began + rng.uniform(0, took)
        while time.monotonic() < deadline and _writing(target, sizes):
            pass
        if _writing(target, sizes):
            os.kill(pid, signal.SIGKILL)
            return
        took = time.monotonic() - began  # this write was shorter: aim within its length next time
    raise AssertionError(f"{writes} writes of {target} each ended before the kill")


def kill_trials(helper: Helper, name: str, root: Path, seed: int, kills: int = KILLS) -> list[dict]:
    """SIGKILL `kills` looping writers of `name` mid-write: what each left at its target, and beside it."""
    rng = random.Random(seed)
    helper.send(f"refs {name} {root / 'refs'}")
    assert helper.read() == ["ok"]
    versions = [(root / "refs" / f"v{v}").read_bytes() for v in (0, 1)]
    assert versions[0] != versions[1]
    sizes = {len(v) for v in versions}
    outcomes = []
    for i in range(kills):
        target = root / f"kill{i}" / "artifact"
        helper.send(f"loop {name} {target}")
        _, pid = helper.read()  # version 0 is complete: from here on there is an old file to lose
        try:
            _kill_mid_write(int(pid), target, sizes, rng)
        finally:
            os.kill(int(pid), signal.SIGKILL)  # again, so a failed trial leaves no writer looping (a no-op if dead)
            helper.send(f"reap {pid}")
            reaped = helper.read()
        assert reaped == ["reaped", pid, str(int(signal.SIGKILL))], "the writer died of the kill, mid-loop"
        data = target.read_bytes() if target.exists() else None
        outcomes.append({"version": versions.index(data) if data in versions else None,
                         "size": None if data is None else len(data),
                         "others": sorted(p.name for p in target.parent.iterdir() if p != target)})
    return outcomes


def _is_temporary(name: str) -> bool:
    """atomic_path's hidden temporary, or the one safetensors' `save_file` writes before renaming onto it."""
    return (name.startswith(".artifact.") and name.endswith(".tmp")) or name.startswith(".tmp")


@pytest.mark.parametrize("name", [w for w in WRITERS if w != "plain"])
def test_a_killed_writer_leaves_the_old_or_the_new_artifact(helper, tmp_path, name):
    outcomes = kill_trials(helper, name, tmp_path, seed=list(WRITERS).index(name))
    for v in (0, 1):
        READERS[name](tmp_path / "refs" / f"v{v}")
    for i, o in enumerate(outcomes):
        assert o["version"] is not None, f"kill {i} left a partial {name} artifact ({o['size']} bytes): {outcomes}"
        assert all(_is_temporary(n) for n in o["others"]), f"kill {i} left {o['others']} beside the target"
    interrupted = sum(bool(o["others"]) for o in outcomes)
    assert interrupted >= KILLS // 2, f"only {interrupted} of {KILLS} kills caught a write under way: {outcomes}"


def test_the_harness_catches_a_non_atomic_writer(helper, tmp_path):
    """Without atomic_path the same kills leave truncated files: the harness has teeth."""
    outcomes = kill_trials(helper, "plain", tmp_path, seed=99)
    partial = [o for o in outcomes if o["version"] is None]
    assert partial, f"no kill caught the plain writer mid-write: {outcomes}"


def test_an_exception_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"mae": 1.0})
    old = target.read_bytes()
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"mae": ')
            raise RuntimeError("mid-write")
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_temporary_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    """Without the fsync a power cut after the rename can leave an empty target (the data still in cache)."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json(tmp_path / "m.json", {"x": 1})
    assert [e[0] for e in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1], "the file fsynced is the one renamed"


if __name__ == "__main__":
    _serve()
    os._exit(0)  # skip interpreter teardown (torch, matplotlib): stdin closed is the only way here
