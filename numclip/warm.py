"""`numclip --warm ...`: run a command in a fork of a process that has already imported torch and open_clip.

Importing torch, open_clip and torchvision costs several seconds per process on a small CPU, and a
`dvc repro` starts one process per stage. With `--warm` (what dvc.yaml's commands use) the first
command starts a server that imports the package once and then forks one child per command. The
child takes the caller's working folder, environment, arguments and its stdin/stdout/stderr (the
file descriptors themselves, passed over a Unix socket), so it behaves as a fresh `numclip` process:
same output, same exit code, a signal to the caller reaches it, and it dies if the caller does.

A server serves one Python, one copy of the package's code and one environment for the variables
that are read at import time (`IMPORT_TIME_ENV`); anything else starts another server. It exits
after `NUMCLIP_WARM_IDLE` seconds (default 60) without work. `NUMCLIP_WARM=0` runs every command in
its own process. The sockets live in `$NUMCLIP_WARM_DIR`, or `$XDG_RUNTIME_DIR/numclip-warm`, or
`/tmp/numclip-warm-<uid>` (a folder only its owner can enter).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
FLAG = "--warm"
# Variables a library may read when it is imported: a server only serves callers that agree on them.
IMPORT_TIME_ENV = ("TORCH", "PYTORCH", "CUDA", "NVIDIA", "TRITON", "OMP", "MKL", "KMP", "PYTHON", "LD_",
                   "NUMCLIP_", "TF_", "MPL", "XDG_CACHE")
STARTUP_SECONDS = 180.0  # the longest a server may take to import everything
PRELOAD = ("numclip.cli", "numclip.stages.ingest", "numclip.stages.pretrain", "numclip.stages.prototypes",
           "numclip.stages.train", "numclip.stages.evaluate", "numclip.stages.counting", "numclip.commands.predict",
           "numclip.commands.run", "numclip.evaluation.plots", "torch.utils.tensorboard")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The `numclip` entry point: `--warm` first asks a warm server; anything else is the CLI itself."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [FLAG]:
        args = args[1:]
        if _warm_allowed():
            try:
                code = run_warm(args)
            except KeyboardInterrupt:  # Ctrl-C while the first server was still importing
                return 130
            if code is not None:
                return code
    from numclip.cli import main as cli_main

    return cli_main(args)


def _warm_allowed() -> bool:
    """Not when switched off, and not under torchrun (its processes are its own to start and watch)."""
    return os.environ.get("NUMCLIP_WARM", "1") != "0" and "TORCHELASTIC_RUN_ID" not in os.environ \
        and "LOCAL_RANK" not in os.environ


def socket_dir() -> Path:
    base = os.environ.get("NUMCLIP_WARM_DIR")
    if base:
        return Path(base)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "numclip-warm" if runtime else Path(f"/tmp/numclip-warm-{os.getuid()}")


def _private_dir() -> Optional[Path]:
    """The socket folder, made if needed; None if it is not ours alone (then nothing is shared)."""
    path = socket_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError:
        return None
    return path if info.st_uid == os.getuid() and not info.st_mode & 0o077 else None


def server_key() -> str:
    """What a server must share with its caller: the interpreter, the package's code, the import-time env."""
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{PACKAGE_DIR}\0".encode())
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(PACKAGE_DIR)}\0".encode() + path.read_bytes())
    for name in sorted(os.environ):
        if name.startswith(IMPORT_TIME_ENV) and not name.startswith("NUMCLIP_WARM"):
            digest.update(f"{name}={os.environ[name]}\0".encode())
    return digest.hexdigest()[:20]


# ---------------------------------------------------------------- the caller's side

def run_warm(args: list[str]) -> Optional[int]:
    """Run `numclip args` in a warm server's child; its exit code, or None if no server could serve."""
    folder = _private_dir()
    if folder is None:
        return None
    key = server_key()
    path = folder / f"{key}.sock"
    for _ in range(2):  # a server that idled out between connect and request is replaced once
        conn = _connect(path) or _start_server(path, folder / f"{key}.lock", folder / f"{key}.log")
        if conn is None:
            return None
        code = _request(conn, args)
        if code is not None:
            return code
    return None


def _connect(path: Path) -> Optional[socket.socket]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _start_server(path: Path, lock: Path, log: Path) -> Optional[socket.socket]:
    """Start a server (one at a time: the lock) and wait until it listens."""
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        conn = _connect(path)  # another caller may have started it while we waited
        if conn is not None:
            return conn
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(PACKAGE_DIR.parent), *filter(None, [os.environ.get("PYTHONPATH")])]))
        with open(log, "ab") as out:
            server = subprocess.Popen([sys.executable, "-m", "numclip.warm", "--serve", str(path), str(PACKAGE_DIR)],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/", env=env,
                                      start_new_session=True, close_fds=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline and server.poll() is None:
            conn = _connect(path)
            if conn is not None:
                return conn
            time.sleep(0.05)
    return None


def _request(conn: socket.socket, args: list[str]) -> Optional[int]:
    """Send the command with our stdio; forward signals to the child; return its exit code."""
    payload = json.dumps({"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    reader = conn.makefile("r")
    try:
        socket.send_fds(conn, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
        started = reader.readline()
        if not started:
            return None  # the server went away before taking the command
        child = json.loads(started)["pid"]
        forwarded = {sig: signal.signal(sig, lambda signum, frame: _signal_group(child, signum))
                     for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            finished = reader.readline()
        finally:
            for sig, handler in forwarded.items():
                signal.signal(sig, handler)
    except OSError:
        return None
    finally:
        reader.close()
        conn.close()
    if not finished:
        print("numclip: the warm server stopped while running the command", file=sys.stderr)
        return 1
    return int(json.loads(finished)["exit"])


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


# ---------------------------------------------------------------- the server's side

def serve(path: Path, idle_seconds: float) -> None:
    """Import everything once, then fork a child per request until idle for `idle_seconds`."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    import torch

    if torch.cuda.is_initialized():  # a forked child could not use CUDA
        raise RuntimeError("CUDA was initialised while preloading: a warm server cannot fork")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)  # a dead server's socket (callers hold the lock while one starts)
    listener.bind(str(path))
    listener.listen(16)
    print(f"warm server {os.getpid()} serving {path}", flush=True)
    active: set[int] = set()
    last_work = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], 1.0)
            if ready:
                conn, _ = listener.accept()
                pid = _fork_child(conn, listener)
                if pid is not None:
                    active.add(pid)
                    threading.Thread(target=_watch, args=(conn, pid, active), daemon=True).start()
            if active:
                last_work = time.monotonic()
            elif time.monotonic() - last_work > idle_seconds:
                return
    finally:
        if path.exists() and os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
            path.unlink()
        listener.close()


def _fork_child(conn: socket.socket, listener: socket.socket) -> Optional[int]:
    """Read one request and fork the child that runs it (in the main thread: no lock is held by
    another thread at the fork, since the watchers only wait)."""
    try:
        head, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        size = struct.unpack("!I", head[:4])[0]
        body = head[4:]
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("the request was cut short")
            body += chunk
        request = json.loads(body)
    except (OSError, ValueError, struct.error):
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        _run_child(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
    except OSError:
        pass
    return pid


def _watch(conn: socket.socket, pid: int, active: set[int]) -> None:
    """Report the child's exit code; kill it if its caller goes away first."""
    done, raw = 0, 0
    while not done:
        ready, _, _ = select.select([conn], [], [], 0.2)
        if ready and not conn.recv(1):  # the caller is gone: nothing will read the result
            _signal_group(pid, signal.SIGKILL)
            done, raw = os.waitpid(pid, 0)
        else:
            done, raw = os.waitpid(pid, os.WNOHANG)
    status = os.waitstatus_to_exitcode(raw)
    code = status if status >= 0 else 128 - status
    try:
        conn.sendall((json.dumps({"exit": code}) + "\n").encode())
    except OSError:
        pass
    conn.close()
    active.discard(pid)


def _run_child(request: dict, fds: list[int]) -> None:
    """Become the caller's `numclip` process: its stdio, folder, environment and arguments."""
    code = 1
    try:
        os.setpgid(0, 0)  # signals from the caller reach this command and any workers it starts
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1 if os.isatty(1) else -1, closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["numclip", *request["argv"]]
        random.seed()  # a fresh process's unseeded draws differ from run to run; so do a child's
        import numpy as np

        np.random.seed()
        from numclip.cli import main as cli_main

        code = cli_main(request["argv"]) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # what an uncaught exception does to a process: a traceback, status 1
        import traceback

        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        if Path(sys.argv[3]) != PACKAGE_DIR:  # the caller's copy of the package is not the one imported here
            sys.exit(f"warm server: asked to serve {sys.argv[3]} but imported {PACKAGE_DIR}")
        serve(Path(sys.argv[2]), float(os.environ.get("NUMCLIP_WARM_IDLE", "60")))
    else:
        sys.exit(main())
