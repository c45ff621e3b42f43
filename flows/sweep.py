"""Protocol sweeps on a Prefect work pool: every step of a protocol (numclip.protocols.steps) becomes a
flow run of the deployment `numclip-sweep-run/<pool>`, which the pool's workers take as they free up.

    prefect work-pool create numclip-sweep --type process
    prefect work-pool set-concurrency-limit numclip-sweep 8        # runs at once, over all workers
    CUDA_VISIBLE_DEVICES=0 prefect worker start --pool numclip-sweep --limit 1 &   # one worker per GPU
    python -m flows.sweep --pool numclip-sweep --recipe recipes/adience.yaml       # numclip protocol's options

The flow `numclip-sweep` (in this process) registers the step deployment, runs the fold steps, then the
runs that have not finished, and aggregates when all are done, into the same tables as
`numclip protocol`. Each step runs in its own folder under the protocol's, which every worker must see
(a shared file system). A step that finished with the same params, data and code is not dispatched
again, so a sweep that was interrupted resumes when the command is run again; it re-attaches to runs
still in flight (a run's idempotency key is its fingerprint). A step whose flow run fails, crashes or
goes silent (no Prefect heartbeat for `lost_after_s`: its process died with its machine or worker) is
dispatched again, up to `max_attempts` times; training resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import get_current_settings
from prefect.states import Crashed

from numclip.core.errors import NumclipError
from numclip.protocols.runner import finish
from numclip.protocols.steps import (
    DONE,
    Run,
    check_protocol,
    finished,
    fold_dir,
    fold_name,
    load_spec,
    prepare_fold,
    protocol_runs,
    read_done,
    run_dir,
    run_fingerprint,
    run_params,
    run_step,
    save_spec,
)

PROJECT = Path(__file__).resolve().parents[1]
STEP_FLOW = "numclip-sweep-run"
STEP_TIMEOUT_S = 48 * 3600  # one training run; a hung one ends here and is dispatched again
HEARTBEAT = "prefect.flow-run.heartbeat"
API_PAGE = 200  # the most flow runs one API read returns


class SweepFailed(RuntimeError):
    """Some steps did not finish after every attempt; the message names them."""


@flow(name=STEP_FLOW, flow_run_name="{label}", timeout_seconds=STEP_TIMEOUT_S, log_prints=True)
def sweep_step(spec: str, label: str, fold: Optional[int], point: Optional[list] = None,
               seed: Optional[int] = None, method: Optional[str] = None) -> None:
    """One step of a protocol: the fold's preparation (no method) or one run. Its record goes to done.json
    in its folder, where the sweep reads it."""
    params, protocol = load_spec(spec)
    log = get_run_logger().info
    if method is None:
        prepare_fold(params, protocol, fold, log)
    else:
        run_step(params, protocol, Run(fold, tuple(map(tuple, point or [])), seed, method), log)


@dataclass
class Step:
    label: str
    parameters: dict[str, Any]
    key: str  # the flow run's idempotency key, an attempt number appended
    folder: Path  # done.json appears here when the step has finished
    fingerprint: Optional[str] = None  # what done.json must hold (a run's; a fold's is known only after ingest)

    def missing(self) -> Optional[str]:
        """Why the step's folder does not show it finished, or None if it does."""
        record = read_done(self.folder)
        if record is None:
            return (f"left no {self.folder / DONE}: the workers must write to the same shared folder as "
                    "this process")
        if self.fingerprint is not None and record["fingerprint"] != self.fingerprint:
            return ("finished with another fingerprint than this process computed: the worker runs other "
                    "code, or sees other data, than this process")
        return None


@dataclass
class _Attempt:
    step: Step
    tries: int  # dispatches of the step by this sweep
    number: int  # the idempotency key's suffix
    flow_run: FlowRun
    heartbeats: Optional[int] = None  # heartbeat events seen so far
    beat_at: Optional[float] = None  # when that count last changed (this process's clock)


class Dispatcher:
    """Dispatches steps to the deployment and waits for them, dispatching again what failed or was lost."""

    def __init__(self, deployment: str, tags: list[str], max_attempts: int, lost_after_s: Optional[float],
                 poll_s: float):
        self.deployment, self.tags, self.max_attempts = deployment, tags, max_attempts
        self.lost_after_s, self.poll_s = lost_after_s, poll_s
        self.logger = get_run_logger()
        self.started = datetime.now(timezone.utc)

    def _submit(self, step: Step, tries: int, number: int = 0) -> _Attempt:
        """Dispatch the step, or re-attach to its flow run of an earlier sweep that is still on its way
        (the same idempotency key); one that ended without a record is an earlier sweep's failure,
        not one of this sweep's attempts."""
        while True:
            flow_run = run_deployment(self.deployment, parameters=step.parameters, timeout=0, tags=self.tags,
                                      flow_run_name=step.parameters["label"],
                                      idempotency_key=f"{step.key}-{number}")
            stale = (flow_run.created is not None and flow_run.created < self.started
                     and flow_run.state is not None and flow_run.state.is_final())
            if not stale or step.missing() is None:
                break
            number += 1
        self.logger.info(f"{step.label}: flow run {flow_run.name} ({flow_run.id}), attempt {tries + 1}")
        return _Attempt(step, tries, number, flow_run)

    def _lost(self, client, attempt: _Attempt) -> bool:
        """True when a running step has sent no heartbeat for lost_after_s (its process is gone)."""
        if self.lost_after_s is None:
            return False
        beats = client.read_events(EventFilter(
            event=EventNameFilter(name=[HEARTBEAT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{attempt.flow_run.id}"])), limit=1).total
        now = time.monotonic()
        if attempt.beat_at is None or beats != attempt.heartbeats:
            attempt.heartbeats, attempt.beat_at = beats, now
        return now - attempt.beat_at > self.lost_after_s

    def run(self, steps: list[Step]) -> None:
        """Return when every step has finished; raise SweepFailed naming those that did not."""
        active = [self._submit(step, 0) for step in steps]
        failed: list[str] = []
        with get_client(sync_client=True) as client:
            while active:
                time.sleep(self.poll_s)
                still = []
                flow_runs = _read_flow_runs(client, [attempt.flow_run.id for attempt in active])
                for attempt in active:
                    flow_run = flow_runs[attempt.flow_run.id]
                    state = flow_run.state
                    missing = attempt.step.missing() if state.is_completed() else None
                    if state.is_completed() and missing is None:
                        self.logger.info(f"{attempt.step.label}: done")
                        continue
                    if state.is_running() and self._lost(client, attempt):
                        message = (f"no heartbeat for {self.lost_after_s:g} s: its process is gone "
                                   "(its worker or machine died)")
                        client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
                        state = Crashed(message=message)
                    if not state.is_final():
                        still.append(attempt)
                        continue
                    why = (f"{flow_run.name} completed but {missing}" if state.is_completed() else
                           f"{flow_run.name} ended {state.name}: {_first_line(state.message)}")
                    if attempt.tries + 1 < self.max_attempts:
                        self.logger.warning(f"{attempt.step.label}: {why}; dispatched again")
                        still.append(self._submit(attempt.step, attempt.tries + 1, attempt.number + 1))
                    else:
                        self.logger.error(f"{attempt.step.label}: {why}; no attempts left")
                        failed.append(f"{attempt.step.label} ({why})")
                active = still
        if failed:
            raise SweepFailed(f"{len(failed)} step(s) did not finish after {self.max_attempts} attempt(s): "
                              + "; ".join(failed))


@flow(name="numclip-sweep", log_prints=True)
def sweep(spec: str, deployment: str, max_attempts: int = 3, lost_after_s: Optional[float] = None,
          poll_s: float = 5.0) -> dict[str, Any]:
    """Run a protocol's steps on the deployment's work pool, then aggregate them.

    spec: the protocol's spec file (numclip.protocols.steps.save_spec). lost_after_s: a running step
    with no heartbeat for this long is marked Crashed and dispatched again (default: three heartbeat
    intervals, PREFECT_FLOWS_HEARTBEAT_FREQUENCY). max_attempts: dispatches per step.
    """
    from prefect.context import get_run_context

    params, protocol = load_spec(spec)
    logger = get_run_logger()
    if lost_after_s is None and (frequency := get_current_settings().flows.heartbeat_frequency):
        lost_after_s = 3.0 * frequency
    dispatcher = Dispatcher(deployment, ["numclip-sweep", protocol.name], max_attempts, lost_after_s, poll_s)
    this_sweep = str(get_run_context().flow_run.id)  # fold steps run once per sweep: ingest sees new data
    dispatcher.run([Step(fold_name(fold), {"spec": spec, "label": f"{protocol.name} {fold_name(fold)}", "fold": fold},
                         key=f"{this_sweep}-{fold_name(fold)}", folder=fold_dir(protocol, fold))
                    for fold in protocol.folds])
    runs = protocol_runs(protocol)
    fingerprints = {run: run_fingerprint(run_params(params, protocol, run), protocol, run) for run in runs}
    todo = [run for run in runs if finished(run_dir(protocol, run), fingerprints[run]) is None]
    logger.info(f"{protocol.name}: {len(runs) - len(todo)} of {len(runs)} runs finished before; "
                f"dispatching {len(todo)}")
    dispatcher.run([Step(run.label, {"spec": spec, "label": f"{protocol.name} {run.label}", "fold": run.fold,
                                     "point": [list(kv) for kv in run.point], "seed": run.seed, "method": run.method},
                         key=fingerprints[run], folder=run_dir(protocol, run), fingerprint=fingerprints[run])
                    for run in todo])
    records = []
    for run in runs:
        folder = run_dir(protocol, run)
        if (record := finished(folder, fingerprints[run])) is None:
            raise SweepFailed(f"{run.label}: its flow run completed but {folder} holds no record of this run "
                              "(another sweep of the same folder changed it?)")
        records.append(record)
    result = finish(protocol, records, logger.info)
    create_markdown_artifact(markdown=result["paths"]["markdown"].read_text(encoding="utf-8"),
                             key=f"numclip-sweep-{_slug(protocol.name)}",
                             description=f"Protocol {protocol.name}: mean ± std over {len(runs)} runs")
    return {"runs": records, "dispatched": len(todo)}


def _read_flow_runs(client, ids: list) -> dict:
    """The flow runs by id, in as few API calls as the API's page size allows."""
    found = {}
    for start in range(0, len(ids), API_PAGE):
        page = ids[start:start + API_PAGE]
        found.update({run.id: run for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)), limit=len(page))})
    return found


def _first_line(text: Optional[str]) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _slug(name: str) -> str:
    """Artifact keys take lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "protocol"


def deploy_steps(pool: str) -> str:
    """Register (or update) the step deployment on `pool`; its runs start in this checkout's folder."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise NumclipError(f"work pool {pool!r} not found: create it with `prefect work-pool create {pool} "
                               "--type process` and start its workers (docs/orchestration.md)") from None
    sweep_step.from_source(source=str(PROJECT), entrypoint="flows/sweep.py:sweep_step").deploy(
        name=pool, work_pool_name=pool, ignore_warnings=True, print_next_steps=False,
        description="One step of a protocol sweep (python -m flows.sweep).")
    return f"{STEP_FLOW}/{pool}"


def main(argv: list[str] | None = None) -> int:
    from flows.serve import wait_for_api
    from numclip.cli import add_protocol_arguments, common_options
    from numclip.protocols.runner import protocol_from_args, save_protocol_curve

    parser = argparse.ArgumentParser(prog="python -m flows.sweep", parents=[common_options()],
                                     description="Run a protocol (numclip protocol's options) on a Prefect "
                                     "work pool's workers; run it again to resume.")
    parser.add_argument("--pool", required=True, help="the process work pool whose workers run the steps")
    parser.add_argument("--max-attempts", type=int, default=3, help="dispatches per step (3)")
    parser.add_argument("--lost-after", type=float, help="seconds without a heartbeat before a running step "
                        "counts as lost (default: 3 x PREFECT_FLOWS_HEARTBEAT_FREQUENCY)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the runs (5)")
    add_protocol_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params, protocol = protocol_from_args(args)
        check_protocol(params, protocol)
        protocol.out_dir = protocol.out_dir.resolve()
        wait_for_api(60)
        deployment = deploy_steps(args.pool)
        spec = save_spec(params, protocol)
        result = sweep(str(spec), deployment, args.max_attempts, args.lost_after, args.poll)
        if args.plot:
            print(f"curve -> {save_protocol_curve(result['runs'], args.plot, protocol)}")
    except NumclipError as e:
        print(f"python -m flows.sweep: error: {e}", file=sys.stderr)
        return 2
    except SweepFailed as e:
        print(f"python -m flows.sweep: {e}", file=sys.stderr)
        return 1
    print(f"sweep {protocol.name}: {len(result['runs'])} runs ({result['dispatched']} dispatched) -> "
          f"{protocol.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
