"""Run one DVC stage as a subprocess and tell what it did: DVC's lock decides what is stale.

`dvc repro <stage>` reruns the stage only when its code, params or data changed; comparing
`dvc.lock` before and after tells which stages really ran, so a run with no new data reports (and
does) no training. Failures carry the tail of the stage's output, and `is_transient` tells the
retry policy which failures are worth another attempt.
"""

from __future__ import annotations

import os
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message holds the command, exit code and output tail."""

    def __init__(self, stage: str, returncode: int, tail: str):
        self.stage, self.returncode, self.tail = stage, returncode, tail
        super().__init__(f"dvc repro {stage} failed with exit code {returncode}:\n{tail}")

    @property
    def transient(self) -> bool:
        return any(marker in self.tail for marker in TRANSIENT_MARKERS)


def is_transient(error: BaseException | None) -> bool:
    return isinstance(error, StageFailed) and error.transient


@dataclass
class StageResult:
    stage: str
    ran: list[str]  # lock entries (e.g. train@coop) that changed: those stages really ran
    up_to_date: list[str]


def read_lock(project: Path) -> dict[str, object]:
    """dvc.lock's stage entries ({} before the first run)."""
    path = project / "dvc.lock"
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})


def pipeline_stages(project: Path) -> list[str]:
    """The dvc.yaml entries in run order, a foreach/matrix group once (`train` for `train@coop`, ...):
    read by DVC from dvc.yaml, the one stage list, so a stage added there needs no edit here."""
    try:
        return list(dict.fromkeys(stage.group for stage in pipeline(project)))
    except NumclipError as e:
        raise StageFailed("(stage list)", 2, str(e)) from None


def _belongs(entry: str, stage: str) -> bool:
    return entry == stage or entry.startswith(stage + "@")


def run_stage(stage: str, project: Path, echo: Callable[[str], None] | None = None) -> StageResult:
    """`dvc repro <stage>` in `project`, echoing every output line (default: `print`, looked up at
    call time so Prefect's `log_prints` sees it); StageFailed on a non-zero exit."""
    echo = echo or print
    before = read_lock(project)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(["dvc", "repro", stage], cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            echo(line)
    if proc.returncode != 0:
        raise StageFailed(stage, proc.returncode, "\n".join(tail))
    after = read_lock(project)
    mine = sorted(e for e in after if _belongs(e, stage))
    ran = [e for e in mine if before.get(e) != after[e]]
    return StageResult(stage=stage, ran=ran, up_to_date=[e for e in mine if e not in ran])
