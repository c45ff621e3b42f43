"""A real Prefect server on a free loopback port for the flow tests (a module-scoped fixture); the
prefect CLI; starting a long-running process (a worker, `flows.serve`) and stopping it together with
everything it started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_loopback_port
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from flows.stages import kill_tree

SERVER_START_S = 120
PREFECT = [sys.executable, "-m", "prefect"]  # the CLI of this interpreter's prefect (and its SQLAlchemy)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process the tests started and everything under it, in its session or not (a worker starts
    each flow run in a session of its own)."""
    started = time.monotonic()
    kill_tree(proc)
    print(f"stopped {proc.args[:3]} in {time.monotonic() - started:.1f} s")


def prefect_cli(env: dict, *args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run `prefect <args>` with `env`; fail the test, with its output, unless it succeeds."""
    proc = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def start_process(args: list[str], env: dict, cwd: Path, log_path: Path, ready: str) -> subprocess.Popen:
    """Start a long-running process in its own session; wait (bounded) until its log shows `ready`."""
    log = open(log_path, "w")
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + SERVER_START_S
    while ready not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"{' '.join(args[:4])} did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="2")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            yield env
            APILogWorker.drain_all(timeout=10)  # logs and events reach the server before it stops
            EventsWorker.drain_all(timeout=10)
    finally:
        stop(proc)
        log.close()
