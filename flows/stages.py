"""Run one DVC stage as a subprocess and tell what it did: DVC's lock decides what is stale.

`dvc repro <stage>` reruns the stage only when its code, params or data changed; comparing
`dvc.lock` before and after tells which stages really ran, so a run with no new data reports (and
does) no training. Every output line goes to a logger, at INFO for stdout and WARNING for stderr
(ERROR for DVC's and numclip's error lines). A stage that outlives its timeout is killed with
every process under it. Failures carry the tail of the stage's output, and `is_transient` tells the
retry policy which failures are worth another attempt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import yaml

from numclip.commands.run import pipeline
from numclip.core.errors import NumclipError

# Output that marks a failure another attempt can fix: another DVC process holds the repository lock
# (DVC gives up after 3 s), or a file system / network hiccup.
TRANSIENT_MARKERS = (
    "Unable to acquire lock",
    "Resource temporarily unavailable",
    "Connection reset",
    "Connection refused",
    "Temporary failure in name resolution",
)
TAIL_LINES = 40
KILL_GRACE_S = 10.0  # SIGTERM, then this long before SIGKILL

Log = Callable[[int, str], None]  # (logging level, line), e.g. a logger's `log`
_default_logger = logging.getLogger("flows.stages")


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message holds the command, exit code and output tail."""

    def __init__(self, stage: str, returncode: int, tail: str, reason: str | None = None):
        self.stage, self.returncode, self.tail = stage, returncode, tail
        super().__init__(f"dvc repro {stage} {reason or f'failed with exit code {returncode}'}:\n{tail}")

    @property
    def transient(self) -> bool:
        return any(marker in self.tail for marker in TRANSIENT_MARKERS)


class StageTimedOut(StageFailed):
    """A DVC stage ran past its timeout and was killed, with everything it started."""

    def __init__(self, stage: str, timeout_s: float, tail: str):
        self.timeout_s = timeout_s
        super().__init__(stage, -signal.SIGTERM, tail, reason=f"timed out after {timeout_s:g} s and was killed")

    @property
    def transient(self) -> bool:  # another attempt would hang the same way
        return False


def is_transient(error: BaseException | None) -> bool:
    return isinstance(error, StageFailed) and error.transient


def error_of(state) -> BaseException | None:
    """The exception a failed Prefect state holds, or None (a state read back from the API holds none)."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return None
    return error if isinstance(error, BaseException) else None


@dataclass
class StageResult:
    stage: str
    ran: list[str]  # lock entries (e.g. train@coop) that changed: those stages really ran
    up_to_date: list[str]


@dataclass
class _Running:
    """The stage this process runs now, with its last output lines; cleared when it succeeds, so after a
    failure, a timeout or an interruption it names the stage that did not finish (for the failure hook)."""
    stage: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


_running = _Running()


def unfinished_stage() -> tuple[str | None, list[str]]:
    """(stage, last output lines) of the stage that started in this process and did not succeed."""
    return _running.stage, list(_running.tail)


def forget_unfinished_stage() -> None:
    _running.stage = None
    _running.tail.clear()


def read_lock(project: Path) -> dict[str, object]:
    """dvc.lock's stage entries ({} before the first run)."""
    path = project / "dvc.lock"
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})


def pipeline_entries(project: Path) -> list[str]:
    """Every stage DVC expands from dvc.yaml, in run order, a foreach/matrix group as its instances
    (`train@zeroshot`, `train@coop`, ...): what the flow runs, one task per trained method."""
    try:
        return [stage.name for stage in pipeline(project)]
    except NumclipError as e:
        raise StageFailed("(stage list)", 2, str(e)) from None


def _belongs(entry: str, stage: str) -> bool:
    return entry == stage or entry.startswith(stage + "@")


def line_level(line: str, from_stderr: bool) -> int:
    """INFO for stdout, WARNING for stderr; ERROR for DVC's `ERROR:` lines, `numclip <cmd>: error:` lines
    and tracebacks, on either stream."""
    text = line.lstrip()
    if text.startswith(("ERROR", "Traceback")) or ": error:" in text:
        return logging.ERROR
    if from_stderr or text.startswith("WARNING"):
        return logging.WARNING
    return logging.INFO


def _pump(stream: IO[str], from_stderr: bool, lines: queue.Queue) -> None:
    """Forward `stream`'s lines to `lines` until its end (every writer gone), then close it."""
    try:
        with stream:
            for line in stream:
                lines.put((from_stderr, line.rstrip()))
    finally:
        lines.put(None)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM to `dvc repro` and every process under it, SIGKILL to those still alive after the grace."""
    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=KILL_GRACE_S)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=KILL_GRACE_S)
    proc.wait(timeout=KILL_GRACE_S)


def run_stage(stage: str, project: Path, log: Log | None = None, timeout_s: float | None = None) -> StageResult:
    """`dvc repro <stage>` in `project`, every output line sent to `log(level, line)` (default: the
    `flows.stages` logger). StageFailed on a non-zero exit, StageTimedOut (after killing `dvc` and every
    process under it) past `timeout_s`; any exception raised meanwhile, such as the flow's own timeout
    or Ctrl-C, kills them too before it propagates. `dvc` stays in this process group, so whatever
    kills the group (a worker cancelling the run) kills the stage too."""
    log = log or _default_logger.log
    before = read_lock(project)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    forget_unfinished_stage()
    _running.stage = stage
    tail = _running.tail
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    proc = subprocess.Popen(["dvc", "repro", stage], cwd=project, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    lines: queue.Queue = queue.Queue()
    pumps = [threading.Thread(target=_pump, args=(stream, err, lines), daemon=True, name=f"dvc-{stage}-{i}")
             for i, (stream, err) in enumerate(((proc.stdout, False), (proc.stderr, True)))]
    for pump in pumps:
        pump.start()
    def wait_s() -> float:  # at most a second, so that an exception raised into this thread is seen promptly
        if deadline is None:
            return 1.0
        left = deadline - time.monotonic()
        if left <= 0:
            raise StageTimedOut(stage, timeout_s, "\n".join(tail))
        return min(1.0, left)

    try:
        open_streams = len(pumps)
        while open_streams:
            try:
                item = lines.get(timeout=wait_s())
            except queue.Empty:
                continue
            if item is None:
                open_streams -= 1
                continue
            from_stderr, line = item
            tail.append(line)
            log(line_level(line, from_stderr), line)
        while True:  # both pipes closed: dvc is exiting
            try:
                proc.wait(timeout=wait_s())
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        kill_tree(proc)  # the pumps end once the last process holding the pipes is gone
        raise
    if proc.returncode != 0:
        raise StageFailed(stage, proc.returncode, "\n".join(tail))
    forget_unfinished_stage()
    after = read_lock(project)
    mine = sorted(e for e in after if _belongs(e, stage))
    ran = [e for e in mine if before.get(e) != after[e]]
    return StageResult(stage=stage, ran=ran, up_to_date=[e for e in mine if e not in ran])
