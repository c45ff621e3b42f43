"""The Prefect flow over the real DVC stages, against a real Prefect server on a loopback port.

One tiny repository copy (two methods) and one server (tests/prefect_server.py) serve the whole
module; the tests run in file order: the server's scheduler creates a cron deployment's runs, the
served deployment builds everything, a process worker runs the work-pool deployment (nothing
reruns), then in-process runs check timeouts, the failure alert, the workspace guard, that a data
drop is picked up, and how failures are retried or reported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import free_loopback_port
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
from prefect.schedules import Cron
from prefect.states import Crashed
from prefect_server import PREFECT, prefect_cli, start_process, stop
from tiny_repo import dvc_env, make_tiny_repo

from flows.alerts import FAILURE_KEY, alert_failure
from flows.overrides import apply_param_overrides
from flows.report import metrics_changes
from flows.retrain import REPORT_KEY, WORKSPACE_LIMIT, retrain
from flows.stages import StageFailed, StageTimedOut, forget_unfinished_stage, is_transient, line_level, run_stage
from numclip.core.errors import NumclipError

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["prefect_server"]  # its `server` fixture: one real Prefect server for the module
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


def test_stage_output_levels():
    assert line_level("Running stage 'ingest':", from_stderr=False) == logging.INFO
    assert line_level("skipped 3 files (by extension)", from_stderr=True) == logging.WARNING
    assert line_level("WARNING: the model learned nothing", from_stderr=False) == logging.WARNING
    assert line_level("ERROR: failed to reproduce 'ingest'", from_stderr=True) == logging.ERROR
    assert line_level("numclip ingest: error: bad label", from_stderr=True) == logging.ERROR


def _hang_stage(marker: str) -> str:
    return (f"  hang:\n    cmd: echo {marker} started && echo {marker} on stderr 1>&2 && sleep {HANG_SECONDS}\n")


def _sleepers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-2:] == ["sleep", str(HANG_SECONDS)]:
            found.append(proc)
    return found


def test_a_hung_stage_is_killed_at_its_timeout(tmp_path):
    """A real `dvc repro` in a bare DVC project: stdout at INFO, stderr at WARNING, killed at the timeout."""
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=60, env=dvc_env(tmp_path))
    (tmp_path / "dvc.yaml").write_text("stages:\n" + _hang_stage("unit"))
    lines: list[tuple[int, str]] = []
    started = time.monotonic()
    with pytest.raises(StageTimedOut, match="dvc repro hang timed out after 3 s") as caught:
        run_stage("hang", tmp_path, log=lambda level, line: lines.append((level, line)), timeout_s=3)
    assert time.monotonic() - started < 30
    assert (logging.INFO, "unit started") in lines and (logging.WARNING, "unit on stderr") in lines
    assert "unit started" in caught.value.tail and not is_transient(caught.value)
    assert not _sleepers(), "the stage's command was killed with dvc"


def test_serve_without_a_server_says_so(tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path), PREFECT_API_URL=f"http://127.0.0.1:{free_loopback_port()}/api")
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
@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_tiny_repo(tmp_path_factory.mktemp("repo"), methods=["zeroshot", "coop"])
    for path in [*(REPO / "flows").glob("*.py"), REPO / "prefect.yaml"]:  # this checkout's, committed or not
        shutil.copy2(path, repo / path.relative_to(REPO))
    return repo


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
        self.records: list[tuple[int, str]] = []
        self.trigger, self.event = trigger, threading.Event()

    def emit(self, record):
        message = record.getMessage()
        self.messages.append(message)
        self.records.append((record.levelno, message))
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

    def at(self, level: int) -> str:
        return "\n".join(message for levelno, message in self.records if levelno == level)


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


def _failure_report(flow_run_id) -> str:
    """The `numclip-failure` artifact of one flow run."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[FAILURE_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(artifacts) == 1, artifacts
    return artifacts[0].data


def _scheduler_errors(server_env: dict) -> list[str]:
    """The server log's lines that report a scheduler failure (such as SQLAlchemy 2.1's bulk DML error)."""
    log = (Path(server_env["PREFECT_HOME"]) / "server.log").read_text(errors="replace").splitlines()
    return [line for line in log if ("ERROR" in line and "schedul" in line.lower())
            or "sqlalchemy.exc" in line or "bulk DML" in line]


def _auto_scheduled_runs(deployment_id, at_least: int = 1, server_env: dict | None = None) -> list:
    """The deployment's Scheduled runs that the server's scheduler created, polled for a bounded time (and
    no longer once the server log shows a scheduler error)."""
    deadline = time.monotonic() + SCHEDULER_WAIT_S
    with get_client(sync_client=True) as client:
        while not (server_env and _scheduler_errors(server_env)):
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            runs = [r for r in runs if r.auto_scheduled]
            if len(runs) >= at_least or time.monotonic() > deadline:
                return runs
            time.sleep(1)
    return []


def _deployment_id(name: str):
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name).id


def _watch(env: dict, deployment: str, *params: str) -> subprocess.CompletedProcess:
    args = [*PREFECT, "deployment", "run", deployment, "--watch", "--watch-timeout", str(RUN_TIMEOUT_S)]
    for param in params:
        args += ["--param", param]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60)


# -------------------------------------------------------------------------------- the scheduler
def test_the_server_scheduler_creates_the_runs_of_a_cron_deployment(server):
    """The server's own scheduler service (not a client) creates a cron deployment's runs, with no error.

    With SQLAlchemy 2.1 it fails on every cycle (bulk DML error in the server log) and creates none:
    the `flows` extra holds SQLAlchemy below 2.1."""
    created = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    deployment_id = retrain.to_deployment(name="scheduler-check", schedule=Cron("* * * * *", timezone="UTC")).apply()
    try:
        runs = _auto_scheduled_runs(deployment_id, at_least=3, server_env=server)
        assert len(runs) >= 3, "the scheduler created no run:\n" + "\n".join(_scheduler_errors(server))
        starts = sorted(r.expected_start_time for r in runs)
        assert all(t.second == 0 and t.microsecond == 0 for t in starts), starts
        assert len(set(starts)) == len(starts) and starts[0] >= created, (created, starts[:3])
        assert all(r.idempotency_key.startswith(f"scheduled {deployment_id} ") for r in runs)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
    assert not _scheduler_errors(server)


# ---------------------------------------------------------------------------------- end to end
def test_served_deployment_run_end_to_end(server, repo):
    """Serve both deployments, trigger one with the real CLI, watch it finish, read its artifacts; the
    nightly deployment's cron runs are created by the server's scheduler."""
    env = _env(server, repo)
    hour = (datetime.now(timezone.utc).hour + 12) % 24  # a nightly run never falls due during the test
    serving = start_process([sys.executable, "-m", "flows.serve", "--cron", f"0 {hour} * * *", "--timezone", "UTC"],
                     env, repo, repo.parent / "serve.log", ready="numclip-retrain/on-demand")
    try:
        ls = prefect_cli(env, "deployment", "ls")
        assert "numclip-retrain/nightly" in ls and "numclip-retrain/on-demand" in ls
        run = _watch(env, "numclip-retrain/on-demand", 'overrides=["train.epochs=3"]')
        assert run.returncode == 0 and "Completed" in run.stdout, \
            run.stdout[-3000:] + run.stderr[-2000:] + (repo.parent / "serve.log").read_text()[-5000:]
        nightly = _auto_scheduled_runs(_deployment_id("numclip-retrain/nightly"))  # while served
    finally:
        stop(serving)
    assert serving.poll() is not None
    assert nightly and {(r.expected_start_time.astimezone(timezone.utc).hour, r.expected_start_time.minute)
                        for r in nightly} == {(hour, 0)}
    assert not _scheduler_errors(server)

    comparison = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert set(comparison) == {"zeroshot", "coop"}
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 3
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["train@coop"]["params"]["params.yaml"]["train"]["epochs"] == 3

    listed = prefect_cli(env, "artifact", "ls")
    assert "numclip-metrics" in listed and "numclip-report" in listed
    table = prefect_cli(env, "artifact", "inspect", "numclip-metrics", "--limit", "1")
    assert "coop" in table and "test MAE (argmax)" in table
    report = _latest_report()
    assert "`train.epochs=3`" in report and "train@coop" in report and "| coop |" in report


def test_work_pool_deployment_runs_on_a_process_worker(server, repo):
    """prefect.yaml: `prefect deploy --all` registers both deployments on the `numclip` pool, and a real
    `prefect worker start --pool numclip --type process` runs one. Nothing changed, so nothing reruns."""
    env = {**_env(server, repo), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    lock_before = (repo / "dvc.lock").read_text()
    prefect_cli(env, "work-pool", "create", "numclip", "--type", "process")
    prefect_cli(env, "deploy", "--all", "--no-prompt", cwd=repo)
    ls = prefect_cli(env, "deployment", "ls")
    assert "numclip-retrain/nightly" in ls and "numclip-retrain/on-demand" in ls
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("numclip-retrain/nightly")
        on_demand = client.read_deployment_by_name("numclip-retrain/on-demand")
    assert nightly.work_pool_name == on_demand.work_pool_name == "numclip"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"] and not on_demand.schedules
    runs = _auto_scheduled_runs(nightly.id)
    assert runs and {(r.expected_start_time.hour, r.expected_start_time.minute) for r in runs} == {(2, 0)}
    with get_client(sync_client=True) as client:
        client.pause_deployment(nightly.id)  # a 02:00 run must not start during the test

    worker = start_process([*PREFECT, "worker", "start", "--pool", "numclip", "--type", "process", "--limit", "1"],
                    env, repo, repo.parent / "worker.log", ready="started")
    try:
        run = _watch(env, "numclip-retrain/on-demand")
        assert run.returncode == 0 and "Completed" in run.stdout, \
            run.stdout[-3000:] + run.stderr[-2000:] + (repo.parent / "worker.log").read_text()[-5000:]
    finally:
        stop(worker)
    assert (repo / "dvc.lock").read_text() == lock_before, "nothing was stale: nothing reran"
    report = _latest_report()
    assert "Nothing was stale" in report and "No metric changed." in report

    with get_client(sync_client=True) as client:
        flow_run = max(client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
            any_=[on_demand.id]))), key=lambda r: r.created)  # this one, after the served one
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    skipping = [log for log in logs if "didn't change, skipping" in log.message]
    assert skipping and all(log.level == logging.INFO for log in skipping), "the stages' output, in the API"
    names = {r.name for r in task_runs}
    assert {"dvc repro train@zeroshot", "dvc repro train@coop"} <= names, "one task per trained method"
    assert "dvc repro train" not in names


@pytest.fixture()
def hung_stage(repo):
    """A first stage that prints two lines and hangs, in the repository's dvc.yaml while the test runs."""
    original = (repo / "dvc.yaml").read_text()
    assert "\nstages:\n" in original
    (repo / "dvc.yaml").write_text(original.replace("\nstages:\n", "\nstages:\n" + _hang_stage("flow"), 1))
    try:
        yield
    finally:
        (repo / "dvc.yaml").write_text(original)
        for proc in _sleepers():  # only if the test failed to see it killed
            proc.kill()


def test_a_hung_stage_fails_the_run_at_its_timeout_and_is_reported(server, repo, dvc_site_cache, hung_stage):
    params_before = (repo / "params.yaml").read_text()
    started = time.monotonic()
    with RunLogs() as logs:
        state = retrain(project_dir=str(repo), stage_timeout_s=3, retries=2, retry_delay_seconds=0.5,
                        return_state=True)
    assert time.monotonic() - started < 60
    assert state.is_failed() and "dvc repro hang timed out after 3 s" in state.message
    assert _task_runs(state) == {"set-params": 1, "dvc repro hang": 1}, "a timeout is not retried"
    assert not _sleepers(), "the hung command was killed"
    assert "flow started" in logs.at(logging.INFO) and "flow on stderr" in logs.at(logging.WARNING)
    errors = logs.at(logging.ERROR)
    assert "dvc repro hang timed out" in errors and "in stage 'hang'" in errors, "the alert, at ERROR"
    failure = _failure_report(state.state_details.flow_run_id)
    assert "- stage: `hang`" in failure and "flow started" in failure and "timed out after 3 s" in failure
    assert (repo / "params.yaml").read_text() == params_before


def test_the_flow_timeout_stops_the_run_and_kills_the_stage(server, repo, dvc_site_cache, hung_stage):
    started = time.monotonic()
    with RunLogs() as logs:
        state = retrain.with_options(timeout_seconds=5)(project_dir=str(repo), return_state=True)
    assert time.monotonic() - started < 60
    assert state.is_failed() and state.name == "TimedOut", (state.name, state.message)
    assert not _sleepers(), "the stage running when the flow timed out was killed"
    assert "in stage 'hang'" in logs.at(logging.ERROR)
    failure = _failure_report(state.state_details.flow_run_id)
    assert "- stage: `hang`" in failure and "flow started" in failure


def test_two_runs_never_share_the_workspace(server, repo, dvc_site_cache):
    params_before = (repo / "params.yaml").read_text()
    with concurrency(WORKSPACE_LIMIT, occupy=1, strict=True):  # another run holds the workspace
        state = retrain(overrides=["train.epochs=4"], project_dir=str(repo), workspace_wait_s=2, return_state=True)
    assert state.is_failed() and "held the workspace" in state.message and WORKSPACE_LIMIT in state.message
    assert _task_runs(state) == {}, "no task ran"
    assert (repo / "params.yaml").read_text() == params_before
    assert "- stage: none" in _failure_report(state.state_details.flow_run_id)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(WORKSPACE_LIMIT)
    assert limit.limit == 1 and limit.active_slots == 0, "released"


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
    assert "Unable to acquire lock" in logs.at(logging.ERROR), "DVC's error line, at ERROR"
    assert "transient: retried" in logs.at(logging.WARNING)


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
    assert "numclip ingest: error:" in logs.at(logging.ERROR)
    failure = _failure_report(state.state_details.flow_run_id)
    assert "- stage: `ingest`" in failure and "numclip ingest: error:" in failure


def test_bad_override_fails_before_any_stage(server, repo, dvc_site_cache):
    params_before = (repo / "params.yaml").read_text()
    state = retrain(overrides=["train.epochs=two"], project_dir=str(repo), return_state=True)
    assert state.is_failed() and "train.epochs" in state.message
    assert (repo / "params.yaml").read_text() == params_before
    assert not any(name.startswith("dvc repro") for name in _task_runs(state))
    assert "- stage: `set-params`" in _failure_report(state.state_details.flow_run_id)


def test_a_crashed_run_is_reported_from_the_api(server, repo, dvc_site_cache, hung_stage):
    """The process running the flow dies (SIGKILL): its runner calls the on_crashed hook from another process,
    which finds the stage and its last lines in the API. Last in the module: the dead run's workspace slot
    stays taken until its lease lapses."""
    env = _env(server, repo)
    script = f"from flows.retrain import retrain; retrain(project_dir={str(repo)!r})"
    with get_client(sync_client=True) as client:
        earlier = {r.id for r in client.read_flow_runs()}
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while True:  # until the stage's first line has reached the API (SQLite has no text search here)
                new = [r.id for r in client.read_flow_runs() if r.id not in earlier]
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=new))) if new else []
                if any("flow started" in log.message for log in logs):
                    break
                assert runner.poll() is None and time.monotonic() < deadline, "the flow never reached the stage"
                time.sleep(0.5)
            [flow_run] = [client.read_flow_run(run_id) for run_id in new]
        os.killpg(runner.pid, signal.SIGKILL)  # the flow's process and its stage die at once: no hook runs there
        runner.wait(timeout=30)
    finally:
        stop(runner)
    forget_unfinished_stage()  # this test process ran no stage: the hook has only the API to go on
    alert_failure(retrain, flow_run, Crashed(message="Flow run process exited with signal SIGKILL"))
    failure = _failure_report(flow_run.id)
    assert "- stage: `hang`" in failure and "flow started" in failure and "Crashed" in failure
