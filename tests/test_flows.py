"""The Prefect flow over the real DVC stages, against a real Prefect server on a loopback port.

One tiny repository copy (two methods) and one server serve the whole module; the tests run in file
order: the server's scheduler creates a cron deployment's runs, the served deployment builds
everything, a process worker runs the work-pool deployment (nothing reruns), then in-process runs
check timeouts, the failure alert, the workspace guard, that a data drop is picked up, and how
failures are retried or reported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import yaml
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.concurrency.sync import concurrency
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.states import Crashed
from tiny_repo import dvc_env, make_tiny_repo

from flows.alerts import FAILURE_KEY, alert_failure
from flows.overrides import apply_param_overrides
from flows.report import metrics_changes
from flows.retrain import REPORT_KEY, WORKSPACE_LIMIT, retrain
from flows.stages import StageFailed, StageTimedOut, forget_unfinished_stage, is_transient, line_level, run_stage
from numclip.core.errors import NumclipError

REPO = Path(__file__).resolve().parents[1]
SERVER_START_S = 120
RUN_TIMEOUT_S = 600
SCHEDULER_WAIT_S = 60  # the server schedules a new deployment within seconds (recent-deployments loop: 2 s here)
HANG_SECONDS = 347  # `sleep 347`: the hung stage, recognisable among this machine's processes


# ------------------------------------------------------------------------------------ no server
def test_overrides_keep_comments_and_untouched_lines(tmp_path):
    original = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    changed = apply_param_overrides(tmp_path, ["train.epochs=3", "data.synthetic.shapes=[circle]",
                                               "train.seed=0"])
    assert changed == ["train.epochs=3", "data.synthetic.shapes=[circle]"]  # seed was already 0
    new = (tmp_path / "params.yaml").read_text()
    differing = [(a, b) for a, b in zip(original.splitlines(), new.splitlines()) if a != b]
    assert len(original.splitlines()) == len(new.splitlines())
    assert len(differing) == 2, differing
    assert all(a.split("#")[1:] == b.split("#")[1:] for a, b in differing), "comments kept"
    params = yaml.safe_load(new)
    assert params["train"]["epochs"] == 3 and params["data"]["synthetic"]["shapes"] == ["circle"]
    assert apply_param_overrides(tmp_path, ["train.epochs=3"]) == []


def test_bad_override_names_the_key_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with pytest.raises(NumclipError, match="train.epochs"):
        apply_param_overrides(tmp_path, ["train.seed=5", "train.epochs=two"])
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_metrics_changes_and_transient_errors():
    before = {("m.json", "a"): 1.0, ("m.json", "b"): 2.0, ("m.json", "gone"): 3.0}
    after = {("m.json", "a"): 1.0, ("m.json", "b"): 2.5, ("m.json", "new"): 4.0}
    assert metrics_changes(before, after) == [("m.json", "b", 2.0, 2.5), ("m.json", "gone", 3.0, None),
                                              ("m.json", "new", None, 4.0)]
    assert is_transient(StageFailed("ingest", 255, "ERROR: Unable to acquire lock. Most likely..."))
    assert not is_transient(StageFailed("ingest", 255, "numclip ingest: error: bad label"))
    assert not is_transient(ValueError("Unable to acquire lock"))


def test_serve_without_a_server_says_so(tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path), PREFECT_API_URL=f"http://127.0.0.1:{_free_port()}/api")
    proc = subprocess.run([sys.executable, "-m", "flows.serve", "--wait", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "did not answer" in proc.stderr and "prefect server start" in proc.stderr
    assert "Traceback" not in proc.stderr
    env.pop("PREFECT_API_URL")
    proc = subprocess.run([sys.executable, "-m", "flows.serve"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "PREFECT_API_URL is not set" in proc.stderr


# ----------------------------------------------------------------------------- server fixtures
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session and everything it started."""
    started = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # children that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    print(f"stopped {proc.args[:3]} in {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
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
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_tiny_repo(tmp_path_factory.mktemp("repo"), methods=["zeroshot", "coop"])


def _env(server_env: dict, repo: Path) -> dict:
    return {**server_env, **dvc_env(repo), "COLUMNS": "250"}  # rich tables: no truncated keys


@pytest.fixture()
def dvc_site_cache(repo, monkeypatch):
    """In-process flow runs start `dvc` subprocesses that inherit this process's environment."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", dvc_env(repo)["DVC_SITE_CACHE_DIR"])
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


class RunLogs(logging.Handler):
    """Collects the flow's and tasks' log messages; fires `event` when `trigger` appears."""

    def __init__(self, trigger: str | None = None):
        super().__init__()
        self.messages: list[str] = []
        self.trigger, self.event = trigger, threading.Event()

    def emit(self, record):
        message = record.getMessage()
        self.messages.append(message)
        if self.trigger and self.trigger in message:
            self.event.set()

    def __enter__(self):
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).removeHandler(self)

    def text(self) -> str:
        return "\n".join(self.messages)


def _task_runs(state) -> dict[str, int]:
    """Task run name -> number of attempts, for the flow run that ended in `state`."""
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.run_count for r in runs}


def _dvc_lock(repo: Path):
    from dvc.lock import make_lock
    tmp = repo / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return make_lock(str(tmp / "lock"), tmp_dir=str(tmp))


def _latest_report() -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[REPORT_KEY])))
    return max(artifacts, key=lambda a: a.created).data


# ---------------------------------------------------------------------------------- end to end
def test_served_deployment_run_end_to_end(server, repo):
    """Serve both deployments, trigger one with the real CLI, watch it finish, read its artifacts."""
    env = _env(server, repo)
    serve_log = open(repo.parent / "serve.log", "w")
    serving = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=repo, env=env, stdout=serve_log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while "numclip-retrain/on-demand" not in (repo.parent / "serve.log").read_text():
            if serving.poll() is not None or time.monotonic() > deadline:
                pytest.fail("flows.serve did not start:\n" + (repo.parent / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        ls = subprocess.run(["prefect", "deployment", "ls"], env=env, capture_output=True, text=True,
                            timeout=60, check=True).stdout
        assert "numclip-retrain/nightly" in ls and "numclip-retrain/on-demand" in ls
        run = subprocess.run(
            ["prefect", "deployment", "run", "numclip-retrain/on-demand", "--param",
             'overrides=["train.epochs=3"]', "--watch", "--watch-timeout", str(RUN_TIMEOUT_S)],
            env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60)
        assert run.returncode == 0 and "Completed" in run.stdout, \
            run.stdout[-3000:] + run.stderr[-2000:] + (repo.parent / "serve.log").read_text()[-5000:]
    finally:
        _stop(serving)
        serve_log.close()
    assert serving.poll() is not None

    comparison = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert set(comparison) == {"zeroshot", "coop"}
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 3
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["train@coop"]["params"]["params.yaml"]["train"]["epochs"] == 3

    listed = subprocess.run(["prefect", "artifact", "ls"], env=env, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "numclip-metrics" in listed and "numclip-report" in listed
    table = subprocess.run(["prefect", "artifact", "inspect", "numclip-metrics", "--limit", "1"], env=env,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "coop" in table and "test MAE (argmax)" in table
    report = _latest_report()
    assert "`train.epochs=3`" in report and "train@coop" in report and "| coop |" in report


def test_second_run_with_no_change_reruns_nothing(server, repo, dvc_site_cache):
    lock_before = (repo / "dvc.lock").read_text()
    with RunLogs() as logs:
        result = retrain(project_dir=str(repo))
    assert result["ran"] == [] and result["changed_params"] == []
    assert (repo / "dvc.lock").read_text() == lock_before
    assert "didn't change, skipping" in logs.text(), "the stages' own output reaches the Prefect logs"
    report = _latest_report()
    assert "Nothing was stale" in report and "No metric changed." in report


def _drop(repo: Path, name: str, per_label: int = 3) -> None:
    """A folder drop (incoming/<name>/<label>/*.png) made of copies of existing images."""
    manifest_images = sorted((repo / "data" / "synthetic").glob("*.png"))
    assert manifest_images, "the synthetic images exist after the first run"
    for label in range(4):
        folder = repo / "incoming" / name / str(label)
        folder.mkdir(parents=True)
        for i in range(per_label):
            Image.open(manifest_images[(label * per_label + i) % len(manifest_images)]).save(folder / f"{i}.png")


def test_new_data_drop_is_picked_up(server, repo, dvc_site_cache):
    from numclip.data import read_manifest
    rows_before = len(read_manifest(repo / "data" / "manifest.parquet").rows)
    _drop(repo, "batch-1")
    result = retrain(project_dir=str(repo))
    assert result["ran"][:2] == ["ingest", "pretrain"] and "train@coop" in result["ran"]
    assert len(read_manifest(repo / "data" / "manifest.parquet").rows) == rows_before + 12
    assert retrain(project_dir=str(repo))["ran"] == [], "the drop is taken once"


def test_transient_failure_is_retried_and_the_flow_completes(server, repo, dvc_site_cache):
    lock = _dvc_lock(repo)
    lock.lock()
    with RunLogs(trigger="Unable to acquire lock") as logs:
        def release_after_first_failure():
            logs.event.wait(timeout=120)
            lock.unlock()
        releaser = threading.Thread(target=release_after_first_failure)
        releaser.start()
        try:
            state = retrain(project_dir=str(repo), retries=2, retry_delay_seconds=0.5, return_state=True)
        finally:
            releaser.join()
    assert state.is_completed(), state.message
    assert _task_runs(state)["dvc repro ingest"] == 2
    assert "Unable to acquire lock" in logs.text()


def test_persistent_failure_fails_the_flow_with_the_error_in_the_logs(server, repo, dvc_site_cache):
    lock = _dvc_lock(repo)
    lock.lock()
    try:
        with RunLogs() as logs:
            state = retrain(project_dir=str(repo), retries=1, retry_delay_seconds=0.5, return_state=True)
    finally:
        lock.unlock()
    assert state.is_failed()
    assert "dvc repro ingest failed" in state.message and "Unable to acquire lock" in state.message
    assert _task_runs(state)["dvc repro ingest"] == 2, "one try and one retry"
    assert "Unable to acquire lock" in logs.text()


def test_stage_error_fails_at_once_with_the_stage_message(server, repo, dvc_site_cache):
    stray = repo / "incoming" / "labels.csv"  # a drop must be a folder: ingest rejects this
    stray.write_text("path,label\n")
    try:
        with RunLogs() as logs:
            state = retrain(project_dir=str(repo), retries=3, retry_delay_seconds=0.5, return_state=True)
    finally:
        stray.unlink()
    assert state.is_failed()
    assert "numclip ingest: error:" in state.message and "labels.csv" in state.message
    assert _task_runs(state)["dvc repro ingest"] == 1, "not transient: no retry"
    assert "numclip ingest: error:" in logs.text()


def test_bad_override_fails_before_any_stage(server, repo, dvc_site_cache):
    params_before = (repo / "params.yaml").read_text()
    state = retrain(overrides=["train.epochs=two"], project_dir=str(repo), return_state=True)
    assert state.is_failed() and "train.epochs" in state.message
    assert (repo / "params.yaml").read_text() == params_before
    assert not any(name.startswith("dvc repro") for name in _task_runs(state))
