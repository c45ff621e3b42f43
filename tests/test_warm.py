"""`numclip --warm`: a command forked from a warm server behaves as its own process (output, exit code,
working folder, signals), one server is shared by successive commands, and killing the caller kills
the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numclip import warm


@pytest.fixture
def warm_env(tmp_path):
    env = dict(os.environ, NUMCLIP_WARM_DIR=str(tmp_path / "sockets"), NUMCLIP_WARM_IDLE="15")
    yield env
    for line in _server_lines(tmp_path / "sockets"):  # leave no server behind
        _kill(int(line.split()[2]), signal.SIGTERM)


def _numclip(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "numclip", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _server_lines(folder: Path) -> list[str]:
    return [line for log in folder.glob("*.log") for line in log.read_text().splitlines()
            if line.startswith("warm server")] if folder.is_dir() else []


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_same_output_exit_code_and_folder_as_a_process_of_its_own(tmp_path, warm_env):
    (tmp_path / "work").mkdir()
    codes = {}
    for args in (["--help"], ["compare", "--params", "missing.yaml"], ["train", "--method"]):
        cold = _numclip(args, warm_env, tmp_path / "work")
        hot = _numclip(["--warm", *args], warm_env, tmp_path / "work")
        assert (hot.returncode, hot.stdout, hot.stderr) == (cold.returncode, cold.stdout, cold.stderr), args
        codes[args[0]] = hot.returncode, hot.stderr
    assert codes["--help"][0] == 0
    assert codes["compare"] == (2, "numclip compare: error: params file not found: missing.yaml\n")
    assert codes["train"][0] == 2
    assert len(_server_lines(tmp_path / "sockets")) == 1, "one server served every warm command"


def test_off_switch_and_a_foreign_socket_folder_run_in_process(tmp_path, warm_env):
    off = _numclip(["--warm", "--help"], dict(warm_env, NUMCLIP_WARM="0"), tmp_path)
    assert off.returncode == 0 and not (tmp_path / "sockets").exists()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # others could connect: never used
    open_to_all = _numclip(["--warm", "--help"], dict(warm_env, NUMCLIP_WARM_DIR=str(shared)), tmp_path)
    assert open_to_all.returncode == 0 and not list(shared.iterdir())


def test_the_key_follows_the_import_time_environment(monkeypatch):
    before = warm.server_key()
    monkeypatch.setenv("TRITON_INTERPRET", "0" if os.environ.get("TRITON_INTERPRET") == "1" else "1")
    assert warm.server_key() != before
    monkeypatch.undo()
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    assert warm.server_key() == before


@pytest.mark.parametrize("how", ["signal the caller", "kill the caller"])
def test_the_command_dies_with_its_caller(tmp_path, warm_env, how):
    # a long command that needs no data: the CPU kernel micro-benchmarks
    caller = subprocess.Popen([sys.executable, "-m", "numclip", "--warm", "bench", "--out", str(tmp_path / "b")],
                              env=warm_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _server_lines(tmp_path / "sockets"), 200)
        server = int(_server_lines(tmp_path / "sockets")[0].split()[2])
        assert _wait_for(lambda: _children(server)), "the server forked the command"
        (child,) = _children(server)
        caller.send_signal(signal.SIGTERM if how == "signal the caller" else signal.SIGKILL)
        code = caller.wait(timeout=30)
        assert code == (128 + signal.SIGTERM if how == "signal the caller" else -signal.SIGKILL)
        assert _wait_for(lambda: child not in _children(server)), "the command outlived its caller"
    finally:
        caller.kill()
