"""The Prefect flow `numclip-retrain`: the DVC stages as tasks, a readable record as artifacts.

Each task runs one DVC stage (`dvc repro <stage>`), so DVC's lock decides what is stale: a run with
no new data and no changed params trains nothing. A stage that fails for a transient reason (another
DVC process holds the lock, a file system or network hiccup) is retried with exponential backoff;
any other failure fails the run at once with the stage's own error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.overrides import apply_param_overrides
from flows.report import dvc_metrics_diff, metrics_changes, metrics_snapshot, metrics_table, report_markdown
from flows.stages import StageResult, is_transient, pipeline_stages, run_stage
from numclip.config import load_params

PROJECT = Path(__file__).resolve().parents[1]
METRICS_KEY = "numclip-metrics"  # stable artifact keys: each run adds a version under the same key
REPORT_KEY = "numclip-report"


def _transient_failure(task, task_run, state) -> bool:
    """Retry only what another attempt can fix; a bad param or a crash fails at once."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return is_transient(error)


@task(name="set-params", cache_policy=NO_CACHE)
def set_params(project: Path, overrides: list[str]) -> list[str]:
    changed = apply_param_overrides(project, overrides)
    print(f"params.yaml: {len(changed)} of {len(overrides)} override(s) changed a value"
          + (f": {', '.join(changed)}" if changed else ""))
    return changed


@task(name="dvc-stage", task_run_name="dvc repro {stage}", cache_policy=NO_CACHE,
      retry_condition_fn=_transient_failure)
def dvc_stage(stage: str, project: Path) -> StageResult:
    result = run_stage(stage, project)
    print(f"{stage}: ran {', '.join(result.ran) or 'nothing'}; "
          f"up to date {', '.join(result.up_to_date) or 'nothing'}")
    return result


@task(name="publish-record", cache_policy=NO_CACHE)
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


@flow(name="numclip-retrain", log_prints=True)
def retrain(overrides: list[str] | None = None, project_dir: str | None = None,
            retries: int = 3, retry_delay_seconds: float = 10.0) -> dict[str, Any]:
    """Bring the pipeline up to date (`dvc repro`, stage by stage) and publish the run's record.

    overrides: params changes, `section.key=value` (`dvc exp run --set-param` style); they are
    written to params.yaml. retries / retry_delay_seconds: for transient stage failures, the delay
    doubling after each attempt.
    """
    project = Path(project_dir).resolve() if project_dir else PROJECT
    overrides = list(overrides or [])
    changed = set_params(project, overrides)
    before = metrics_snapshot(project)
    stage_task = dvc_stage.with_options(retries=retries,
                                        retry_delay_seconds=exponential_backoff(retry_delay_seconds))
    results = [stage_task(stage, project) for stage in pipeline_stages(project)]
    publish_record(project, results, overrides, changed, before)
    return {"ran": [e for r in results for e in r.ran], "changed_params": changed}
