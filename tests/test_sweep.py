"""A protocol sweep spread over a Prefect process work pool (`python -m flows.sweep`), against a real
server on a loopback port: two workers, each pinned to its own (pretend) GPU, take the runs; one worker
is killed, with its run, mid-run and restarted; the sweep notices the lost run (no heartbeat), runs it
again and finishes with the sequential runner's results; run again, it dispatches nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect_server import prefect_cli, start_process, stop

from flows.sweep import Step
from numclip.cli import main as numclip_main
from numclip.core.atomic import write_json
from numclip.core.errors import NumclipError
from numclip.protocols.steps import DONE, load_spec

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["prefect_server"]
POOL = "numclip-sweep"
TINY = ["data.num_ranks=4", "data.synthetic.num_images=120", "data.synthetic.image_size=32", "pretrain.epochs=1",
        "pretrain.batch_size=16", "train.epochs=1", "train.batch_size=16", "evaluate.batch_size=64",
        "data.incoming=none", "task.concepts.edges=[0, 1, 2]", "task.concepts.names=[a single, a couple of, a few]"]
PROTOCOL = ["--name", "tiny", "--method", "zeroshot", "--method", "coop", "--seeds", "0,1",
            *[a for o in TINY for a in ("--set", o)]]
HEARTBEAT_S = 30  # Prefect's shortest flow-run heartbeat interval
LOST_AFTER_S = 40
SWEEP_TIMEOUT_S = 300


def _step_runs() -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["numclip-sweep-run"])))


def _worker(env: dict, name: str, gpu: str, log: Path) -> subprocess.Popen:
    return start_process([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "1",
                          "--name", name], {**env, "CUDA_VISIBLE_DEVICES": gpu}, REPO, log, ready="started")


def _kill_with_its_runs(worker: subprocess.Popen) -> None:
    """SIGKILL a worker and the flow runs it started (they run in sessions of their own): as if its
    machine died."""
    processes = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=10)
    worker.wait(timeout=10)


def _sweep_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "flows.sweep", "--pool", POOL, "--poll", "1", "--lost-after", str(LOST_AFTER_S),
            "--out", str(out), *PROTOCOL]


def test_sweep_over_two_workers_survives_a_killed_worker(server, tmp_path):
    env = {**server, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    prefect_cli(env, "work-pool", "create", POOL, "--type", "process")
    prefect_cli(env, "work-pool", "set-concurrency-limit", POOL, "2")
    workers = {"a": _worker(env, "sweep-a", "0", tmp_path / "a.log"),
               "b": _worker(env, "sweep-b", "1", tmp_path / "b.log")}
    out = tmp_path / "sweep"
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(_sweep_command(out), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        killed = None
        while killed is None and sweep.poll() is None and time.monotonic() < deadline:
            running = [r for r in _step_runs() if r.state_name == "Running" and " seed=" in r.name
                       and r.labels.get("prefect.worker.name") == "sweep-a"]
            if running:
                killed = running[0]
                _kill_with_its_runs(workers["a"])
                workers["a"] = _worker(env, "sweep-a", "0", tmp_path / "a2.log")
            time.sleep(0.3)
        assert killed is not None, "worker a never ran a run:\n" + (tmp_path / "sweep.log").read_text()[-3000:]

        reference = tmp_path / "sequential"  # meanwhile, the same protocol in this process, one run after another
        assert numclip_main(["protocol", "--out", str(reference), *PROTOCOL]) == 0

        sweep.wait(timeout=max(1.0, deadline - time.monotonic()))
        log = (tmp_path / "sweep.log").read_text()
        assert sweep.returncode == 0, log[-5000:]
        assert (out / "runs.csv").read_text() == (reference / "runs.csv").read_text(), "the sequential results"
        assert (out / "results.md").read_text() == (reference / "results.md").read_text()

        runs = {r.id: r for r in _step_runs()}
        lost = runs[killed.id]
        assert lost.state_name == "Crashed" and "no heartbeat" in lost.state.message, lost.state
        again = [r for r in runs.values() if r.name == killed.name and r.id != killed.id]
        assert [r.state_name for r in again] == ["Completed"], "the lost run was dispatched again, once"
        assert "dispatched again" in log
        workers_used = {r.labels.get("prefect.worker.name") for r in runs.values() if r.state_name == "Completed"}
        assert workers_used == {"sweep-a", "sweep-b"}, "both workers took runs"
        devices = {line.strip() for p in out.glob("all/*/*/done.json") for line in p.read_text().splitlines()
                   if "cuda_visible_devices" in line}
        assert devices == {'"cuda_visible_devices": "0"', '"cuda_visible_devices": "1"'}, "each worker its own GPU"

        # everything finished: run again, the sweep resumes with nothing to dispatch
        rerun = subprocess.run(_sweep_command(out), cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=SWEEP_TIMEOUT_S)
        assert rerun.returncode == 0 and "4 of 4 runs finished before; dispatching 0" in rerun.stderr, \
            rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert len(_step_runs()) == len(runs) + 1, "only the fold step ran again (ingest sees new data)"
    finally:
        if sweep.poll() is None:
            sweep.kill()
        for worker in workers.values():
            stop(worker)


@pytest.mark.parametrize("args, error", [
    (["--pool", "nowhere"], "work pool 'nowhere' not found"),
    (["--pool", POOL, "--method", "nope"], "nope"),
    (["--pool", POOL, "--vary", "train.epochs=1,x"], "train.epochs"),
])
def test_a_bad_sweep_fails_before_any_step_with_one_line(server, tmp_path, args, error):
    result = subprocess.run([sys.executable, "-m", "flows.sweep", *args, "--out", str(tmp_path / "x"), *PROTOCOL],
                            cwd=REPO, env=server, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and error in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists(), "nothing was written"


def test_a_sweep_without_a_server_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([*_sweep_command(tmp_path / "x")], cwd=REPO, env={**env, "PREFECT_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "python -m flows.sweep: error: PREFECT_API_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()


def test_the_shared_folder_guards_name_the_problem(tmp_path):
    """What a worker that sees another folder, or runs other code, leaves behind is named, not aggregated."""
    with pytest.raises(NumclipError, match="every worker must see the protocol's folder"):
        load_spec(tmp_path / "protocol-spec.json")
    step = Step("all coop seed=0", {"label": "x"}, key="k", folder=tmp_path, fingerprint="abc")
    assert "must write to the same shared folder" in step.missing()
    write_json(tmp_path / DONE, {"fingerprint": "other"})
    assert "runs other code, or sees other data" in step.missing()
    write_json(tmp_path / DONE, {"fingerprint": "abc"})
    assert step.missing() is None
