"""The Prefect flow `numclip-retrain`: the DVC stages as tasks, a readable record as artifacts.

Each task runs one DVC stage (`dvc repro <stage>`, a foreach stage as one task per instance, so one
task per trained method), so DVC's lock decides what is stale: a run with no new data and no changed
params trains nothing. A stage that fails for a transient reason (another DVC process holds the lock,
a file system or network hiccup) is retried with exponential backoff; any other failure fails the run
at once with the stage's own error message. Every stage and the flow have a timeout; a failed,
timed-out or crashed run logs at ERROR and publishes a `numclip-failure` artifact (flows/alerts.py).
A run holds the `numclip-workspace` global concurrency limit (one slot) from its first write to its
last, so two runs never share the DVC workspace, whichever process or worker runs them.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.tasks import exponential_backoff

from flows.alerts import alert_failure
from flows.overrides import apply_param_overrides
from flows.report import dvc_metrics_diff, metrics_changes, metrics_snapshot, metrics_table, report_markdown
from flows.stages import (
    StageFailed,
    StageResult,
    error_of,
    forget_unfinished_stage,
    is_transient,
    pipeline_entries,
    run_stage,
)
from numclip.config import load_params

PROJECT = Path(__file__).resolve().parents[1]
METRICS_KEY = "numclip-metrics"  # stable artifact keys: each run adds a version under the same key
REPORT_KEY = "numclip-report"
WORKSPACE_LIMIT = "numclip-workspace"  # global concurrency limit, one slot: one run in the workspace at a time
FLOW_TIMEOUT_S = 12 * 3600  # a nightly run must end before the next one is due
STAGE_TIMEOUT_S = 4 * 3600  # default per stage; the `stage_timeout_s` parameter changes it per run
TASK_TIMEOUT_GRACE_S = 60  # Prefect's own task timeout, a backstop behind run_stage's, which kills the stage


class WorkspaceBusy(RuntimeError):
    """Another run held the workspace's concurrency slot for longer than this run would wait."""


def _transient_failure(task, task_run, state) -> bool:
    """Retry only what another attempt can fix; a bad param or a crash fails at once."""
    return is_transient(error_of(state))


@task(name="set-params", task_run_name="set-params", cache_policy=NO_CACHE, timeout_seconds=300)
def set_params(project: Path, overrides: list[str]) -> list[str]:
    changed = apply_param_overrides(project, overrides)
    get_run_logger().info(f"params.yaml: {len(changed)} of {len(overrides)} override(s) changed a value"
                          + (f": {', '.join(changed)}" if changed else ""))
    return changed


@task(name="dvc-stage", task_run_name="dvc repro {stage}", cache_policy=NO_CACHE,
      retry_condition_fn=_transient_failure)
def dvc_stage(stage: str, project: Path, timeout_s: float | None = None) -> StageResult:
    logger = get_run_logger()
    try:
        result = run_stage(stage, project, log=logger.log, timeout_s=timeout_s)
    except StageFailed as e:
        first = str(e).splitlines()[0]
        if e.transient:
            logger.warning(f"{first} (transient: retried while attempts remain)")
        else:
            logger.error(first)
        raise
    logger.info(f"{stage}: ran {', '.join(result.ran) or 'nothing'}; "
                f"up to date {', '.join(result.up_to_date) or 'nothing'}")
    return result


@task(name="publish-record", task_run_name="publish-record", cache_policy=NO_CACHE, timeout_seconds=1800)
def publish_record(project: Path, stages: list[StageResult], overrides: list[str], changed: list[str],
                   before: dict) -> None:
    comparison_file = load_params(project / "params.yaml").evaluate.comparison
    comparison = project / comparison_file
    create_table_artifact(table=metrics_table(comparison), key=METRICS_KEY,
                          description="Test and validation metrics per method (evaluate stage)")
    markdown = report_markdown(stages, overrides, changed,
                               comparison.with_suffix(".md").read_text(encoding="utf-8"),
                               metrics_changes(before, metrics_snapshot(project)),
                               dvc_metrics_diff(project, comparison_file))
    create_markdown_artifact(markdown=markdown, key=REPORT_KEY,
                             description="Stages run, comparison, and metric changes")


def hold_workspace(stack: ExitStack, wait_s: float) -> None:
    """Take the workspace's one slot (the limit is created on first use), waiting up to `wait_s`."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(WORKSPACE_LIMIT, 1)
    try:
        stack.enter_context(concurrency(WORKSPACE_LIMIT, occupy=1, timeout_seconds=wait_s, strict=True,
                                        raise_on_lease_renewal_failure=False))  # a server restart must not kill a run
    except TimeoutError:
        raise WorkspaceBusy(f"another numclip-retrain run held the workspace (global concurrency limit "
                            f"{WORKSPACE_LIMIT!r}) for more than {wait_s:g} s; nothing was changed") from None


@flow(name="numclip-retrain", timeout_seconds=FLOW_TIMEOUT_S, on_failure=[alert_failure],
      on_crashed=[alert_failure])
def retrain(overrides: list[str] | None = None, project_dir: str | None = None,
            retries: int = 3, retry_delay_seconds: float = 10.0, stage_timeout_s: float = STAGE_TIMEOUT_S,
            workspace_wait_s: float = 3600.0) -> dict[str, Any]:
    """Bring the pipeline up to date (`dvc repro`, stage by stage) and publish the run's record.

    overrides: params changes, `section.key=value` (`dvc exp run --set-param` style); they are
    written to params.yaml. retries / retry_delay_seconds: for transient stage failures, the delay
    doubling after each attempt. stage_timeout_s: a stage still running after this long is killed and
    fails the run. workspace_wait_s: how long to wait while another run holds the workspace.
    """
    forget_unfinished_stage()
    project = Path(project_dir).resolve() if project_dir else PROJECT
    overrides = list(overrides or [])
    with ExitStack() as workspace:
        hold_workspace(workspace, workspace_wait_s)
        changed = set_params(project, overrides)
        before = metrics_snapshot(project)
        stage_task = dvc_stage.with_options(retries=retries,
                                            retry_delay_seconds=exponential_backoff(retry_delay_seconds),
                                            timeout_seconds=stage_timeout_s + TASK_TIMEOUT_GRACE_S)
        results = [stage_task(stage, project, stage_timeout_s) for stage in pipeline_entries(project)]
        publish_record(project, results, overrides, changed, before)
    return {"ran": [e for r in results for e in r.ran], "changed_params": changed}
