"""What a failed or crashed run tells: an ERROR log line and a `numclip-failure` artifact naming the stage
that did not finish and its last output lines.

`alert_failure` is the flow's `on_failure` and `on_crashed` hook. It finds the stage in this order:
1. the stage's own error (`StageFailed`, a timeout included), which holds its output tail;
2. the stage this process was running when the run stopped (the flow's timeout, Ctrl-C);
3. the API: the run's last task run that did not complete and its last log lines. This is the case
   when the process running the flow died and its runner or worker calls the `on_crashed` hook.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId
from prefect.client.schemas.sorting import LogSort
from prefect.logging.loggers import flow_run_logger

from flows.stages import TAIL_LINES, StageFailed, error_of, unfinished_stage

FAILURE_KEY = "numclip-failure"  # stable key: each failed run adds a version
LOGGED_LINES = 10  # of the tail, in the ERROR log line; the artifact has TAIL_LINES


def _unfinished_task_from_api(flow_run_id) -> tuple[str | None, list[str]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        unfinished = [r for r in runs if not (r.state and r.state.is_completed())]
        if not unfinished:
            return None, []
        last = max(unfinished, key=lambda r: r.start_time or r.expected_start_time or r.created)
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[last.id])),
                                sort=LogSort.TIMESTAMP_DESC, limit=TAIL_LINES)
    return last.name.removeprefix("dvc repro "), [log.message for log in reversed(logs)]


def failed_stage(flow_run, state) -> tuple[str | None, list[str]]:
    """(stage or task that did not finish, its last output lines); (None, []) when the run stopped
    outside any task (for example while waiting for the workspace)."""
    error = error_of(state)
    if isinstance(error, StageFailed):
        return error.stage, error.tail.splitlines()[-TAIL_LINES:]
    stage, tail = unfinished_stage()
    if stage is not None:
        return stage, tail
    try:
        return _unfinished_task_from_api(flow_run.id)
    except Exception:  # the alert must not fail because the API did not answer
        return None, []


def failure_markdown(flow_run, state, stage: str | None, tail: list[str]) -> str:
    message = (state.message or "").strip()
    lines = [f"# numclip-retrain run `{flow_run.name}`: {state.name}", "",
             f"- deployment: {flow_run.deployment_id or 'none (run in-process)'}",
             f"- flow run id: `{flow_run.id}`",
             f"- stage: `{stage}`" if stage else "- stage: none (the run stopped outside any stage)",
             "", "## State message", "", "```text", message[:4000] or "(none)", "```"]
    if tail:
        lines += ["", f"## Last {len(tail)} output lines of `{stage}`", "", "```text", *tail, "```"]
    return "\n".join(lines) + "\n"


def alert_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed hook: log at ERROR and publish the `numclip-failure` artifact."""
    stage, tail = failed_stage(flow_run, state)
    logger = flow_run_logger(flow_run, flow)
    shown = "\n".join(tail[-LOGGED_LINES:])
    logger.error("numclip-retrain run %r is %s%s: %s%s", flow_run.name, state.name,
                 f" in stage {stage!r}" if stage else "", (state.message or "").splitlines()[0] if state.message
                 else "no message", f"\nLast output lines of {stage}:\n{shown}" if shown else "")
    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(
            key=FAILURE_KEY, type="markdown", flow_run_id=flow_run.id,
            description=f"Why run {flow_run.name} stopped: state, stage, last output lines",
            data=failure_markdown(flow_run, state, stage, tail)))
