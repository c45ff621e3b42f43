"""Reliability of training runs, each through the real CLI in its own process on tiny data:
a run killed with SIGKILL at a random step and resumed ends bitwise equal to an uninterrupted one;
two runs with the same seed agree exactly and record their seed and versions; two processes under
torchrun (gloo) follow the one-process loss curve with the same global batch, on one node and as
two nodes meeting at a rendezvous endpoint (both on loopback).
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import free_loopback_port
from safetensors import safe_open
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flows.stages import kill_tree
from numclip.config import load_params
from numclip.core.errors import NumclipError
from numclip.data.order import SeededFlip, ShardedBatches, epoch_order
from numclip.training.checkpoint import load_checkpoint, save_checkpoint
from numclip.training.resume import Checkpoints, TrainState

K = 5
TINY = [f"data.num_ranks={K}", "data.synthetic.num_images=200", "data.synthetic.image_size=32",
        "pretrain.epochs=0", "train.epochs=2", "train.batch_size=16", "train.checkpoint_every_steps=1",
        "evaluate.batch_size=64", "task.concepts.edges=[0, 1, 3]", "task.concepts.names=[a, b, c]"]
STEPS = 2 * (140 // 16)  # 2 epochs of the 140 training images in full batches of 16


def _args(*extra: str) -> list[str]:
    return [a for o in (*TINY, *extra) for a in ("--set", o)]


def _numclip(root: Path, *args: str, launcher: tuple[str, ...] = (),
             env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [*launcher, "-m", "numclip", *args] if launcher else [sys.executable, "-m", "numclip", *args]
    return subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def _run(root: Path, *args: str, launcher: tuple[str, ...] = ()) -> str:
    proc = _numclip(root, *args, launcher=launcher)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each process's output once all have exited with 0; fails at the first that does not, or at
    the deadline (the caller stops the others)."""
    outs: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(outs) < len(procs):
        assert time.monotonic() < deadline, f"still running after {timeout} s"
        for i, proc in enumerate(procs):
            if i not in outs:
                try:
                    outs[i] = proc.communicate(timeout=0.2)[0]
                except subprocess.TimeoutExpired:
                    continue
                assert proc.returncode == 0, outs[i]
    return [outs[i] for i in range(len(procs))]


def _outputs(root: Path, method: str = "coop") -> tuple[dict, dict]:
    weights = load_file(str(root / "models" / f"{method}.safetensors"))
    metrics = json.loads((root / "metrics" / "train" / f"{method}.json").read_text())
    metrics.pop("seconds")
    return weights, metrics


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def _step(checkpoint: Path) -> int:
    """The step of the last checkpoint written (-1 before the first)."""
    return load_checkpoint(checkpoint)["train_state"]["step"] if checkpoint.is_file() else -1


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _run(root, "ingest", *_args())
    _run(root, "pretrain", *_args())
    return root


@pytest.fixture(scope="module")
def uninterrupted(project):
    """coop trained start to end, with BatchNorm in training mode, flips and class-balanced draws."""
    _run(project, "train", "--method", "coop", *_args("train.class_balanced=true"))
    return _outputs(project)


@pytest.fixture(scope="module")
def one_process(project):
    """OrdinalCLIP trained by one process with BatchNorm frozen: the losses and training record that
    runs under torchrun must reproduce."""
    _run(project, "train", "--method", "ordinalclip", *_args("train.freeze_batchnorm=true"))
    return _losses(project / "runs" / "ordinalclip"), _outputs(project, "ordinalclip")[1]


def _follows_one_process(project: Path, one_process) -> None:
    """The ordinalclip run just made by 2 processes under torchrun matches the one-process run."""
    one, one_metrics = one_process
    two = _losses(project / "runs" / "ordinalclip")
    _, two_metrics = _outputs(project, "ordinalclip")
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, STEPS + 1))
    assert [v for _, v in two] == pytest.approx([v for _, v in one], rel=1e-4)
    assert two_metrics["run"]["world_size"] == 2
    for a, b in zip(two_metrics["history"], one_metrics["history"]):
        assert a["mae_expectation"] == pytest.approx(b["mae_expectation"], abs=1e-3)
    # rank 0 alone writes: TensorBoard event files (run and hparams) of one process
    files = list((project / "runs" / "ordinalclip").glob("events.out.tfevents.*"))
    assert files and len({re.search(r"\.(\d+)\.\d+$", f.name).group(1) for f in files}) == 1


def test_a_run_killed_at_a_random_step_resumes_to_bitwise_equal_weights(project, uninterrupted):
    target = random.Random(os.getpid()).randrange(2, STEPS - 2)
    proc = _numclip(project, "train", "--method", "coop", *_args("train.class_balanced=true"))
    checkpoint = project / "checkpoints" / "coop" / "state.safetensors"
    deadline = time.time() + 240
    while _step(checkpoint) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(checkpoint)["train_state"]["step"]
    assert 0 < killed_at < STEPS

    # what `dvc repro` does before re-running the stage: remove its outputs
    for out in (project / "models" / "coop.safetensors", project / "runs" / "coop"):
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink(missing_ok=True)
    # a checkpoint of another configuration is refused by --resume, naming what differs
    proc = _numclip(project, "train", "--method", "coop", "--resume", *_args("train.class_balanced=true",
                                                                               "train.lr.context=0.5"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "train.lr.context" in out and "Traceback" not in out

    out = _run(project, "train", "--method", "coop", "--resume", "auto", *_args("train.class_balanced=true"))
    assert f"resuming from checkpoints/coop/state.safetensors at step {killed_at}" in out
    weights, metrics = _outputs(project)
    ref_weights, ref_metrics = uninterrupted
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights), "resumed weights differ"
    assert metrics == ref_metrics
    assert not checkpoint.parent.exists(), "a finished run leaves no checkpoint to resume"
    # TensorBoard was replayed from the checkpoint, then continued: every step once
    assert [s for s, _ in _losses(project / "runs" / "coop")] == list(range(1, STEPS + 1))


def test_the_same_seed_gives_identical_runs_and_records_its_versions(project, uninterrupted):
    _run(project, "train", "--method", "coop", *_args("train.class_balanced=true"))
    weights, metrics = _outputs(project)
    assert all(torch.equal(weights[k], uninterrupted[0][k]) for k in weights)
    assert metrics == uninterrupted[1]
    import open_clip

    import numclip
    assert metrics["run"] == {"seed": 0, "numclip": numclip.__version__, "torch": torch.__version__,
                              "open_clip": open_clip.__version__, "python": metrics["run"]["python"],
                              "device": "cpu", "world_size": 1}
    with safe_open(str(project / "models" / "coop.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["numclip"])["run"]["torch"] == torch.__version__


def test_two_processes_under_torchrun_follow_the_one_process_loss_curve(project, one_process):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    _run(project, "train", "--method", "ordinalclip", *_args("train.freeze_batchnorm=true"), launcher=torchrun)
    _follows_one_process(project, one_process)


def test_two_nodes_under_torchrun_follow_the_one_process_loss_curve(project, one_process):
    """Two torchrun agents of one process each, started as on two machines (c10d rendezvous at node
    0's address, which node 0 hosts), here both on loopback and in one folder: rank 0 alone writes,
    the other process only reads the data and the pretrained backbone."""
    port = free_loopback_port()
    loopback = next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
    nodes: list[subprocess.Popen] = []
    try:
        for node in (0, 1):
            torchrun = (sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                        "--rdzv-id", f"numclip-test-{os.getpid()}-{port}", "--rdzv-conf", f"is_host={node == 0}",
                        "--local-addr", "127.0.0.1")
            nodes.append(_numclip(project, "train", "--method", "ordinalclip", *_args("train.freeze_batchnorm=true"),
                                  launcher=torchrun, env={"GLOO_SOCKET_IFNAME": loopback}))
        outs = _wait_all(nodes, timeout=240)
    finally:
        for proc in nodes:
            kill_tree(proc)  # torchrun and its worker, if a failure left them running
    assert sum("ordinalclip: best epoch" in out for out in outs) == 1, outs  # rank 0 alone speaks
    _follows_one_process(project, one_process)


def test_a_damaged_checkpoint_is_refused_by_resume_and_set_aside_by_auto(project):
    """The DVC stage runs --resume auto, so a checkpoint it cannot use must not fail every later
    `dvc repro`: --resume refuses it in one line; auto keeps it aside, renamed, and trains afresh."""
    folder = project / "checkpoints" / "coop"
    folder.mkdir(parents=True, exist_ok=True)
    damaged = b'\x40\x00\x00\x00\x00\x00\x00\x00{"__metadata__": {"format": "numclip-'  # cut in its header
    (folder / "state.safetensors").write_bytes(damaged)
    one_epoch = _args("train.epochs=1")
    proc = _numclip(project, "train", "--method", "coop", "--resume", *one_epoch)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "checkpoints/coop/state.safetensors is unusable" in out and "--resume auto" in out, out
    out = _run(project, "train", "--method", "coop", "--resume", "auto", *one_epoch)
    aside = list((project / "checkpoints").glob("coop.unusable-*"))
    assert len(aside) == 1 and (aside[0] / "state.safetensors").read_bytes() == damaged
    assert f"set aside as checkpoints/{aside[0].name}; starting afresh" in out, out
    assert not folder.exists(), "the fresh run finished and removed its own checkpoints"
    assert _outputs(project)[1]["history"][-1]["epoch"] == 1


# --- the pieces, without processes ---------------------------------------------------------------

def test_ranks_together_see_the_one_process_batches_and_resume_skips_done_steps():
    order = epoch_order(50, seed=3, epoch=2)
    assert sorted(order) == list(range(50)) and order != epoch_order(50, seed=3, epoch=3)
    one = list(ShardedBatches(order, batch_size=8, steps=6))
    ranks = [list(ShardedBatches(order, 8, 6, rank=r, world_size=2)) for r in (0, 1)]
    for k, batch in enumerate(one):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(batch)
        assert [i for pair in zip(ranks[0][k], ranks[1][k]) for i in pair] == batch  # interleaved
    assert list(ShardedBatches(order, 8, 6, start_step=4)) == one[4:]


def test_flips_depend_on_seed_epoch_and_index_only():
    class Rows:
        rows = [None] * 64

    flips = SeededFlip(Rows(), seed=0)
    first = [flips.flips(i) for i in range(64)]
    assert first == [flips.flips(i) for i in range(64)] and 10 < sum(first) < 54
    flips.epoch = 1
    assert [flips.flips(i) for i in range(64)] != first
    assert not any(SeededFlip(Rows(), seed=0, enabled=False).flips(i) for i in range(64))


def test_checkpoints_round_trip_nested_state_and_refuse_other_files(tmp_path):
    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
                           "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
             "rng": (3, [1, 2, 3], None), "history": [{"epoch": 1, "mae": 0.5}]}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.ones(2, 3))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["rng"] == (3, [1, 2, 3], None) and back["history"] == state["history"]
    pickle = tmp_path / "evil.safetensors"
    torch.save({"x": 1}, pickle)
    with pytest.raises(NumclipError, match="not a readable training checkpoint"):
        load_checkpoint(pickle)


def test_a_code_change_never_resumes_an_older_run(tmp_path, monkeypatch):
    """The resume identity holds the fingerprint of the training code: after a code change
    `--resume auto` starts afresh and says why; `--resume` refuses."""
    monkeypatch.chdir(tmp_path)
    params = load_params(None)
    for path in (params.data.manifest, params.pretrain.output):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"same inputs")
    old = Checkpoints(params, "coop", code="fingerprint of the old code")
    save_checkpoint(old.path, {"identity": old.identity, "train_state": asdict(TrainState(step=3)), "model": {},
                               "optimizer": {}, "scheduler": {}, "rng": {}})
    said: list[str] = []
    assert Checkpoints(params, "coop", "fingerprint of the old code").start("auto", said.append).step == 3
    new = Checkpoints(params, "coop", "fingerprint of the new code")
    assert new.start("auto", said.append) == TrainState()
    assert "differs in code" in said[-1] and "starting afresh" in said[-1]
    with pytest.raises(NumclipError, match="differs in code"):
        new.start("explicit", said.append)


def test_too_few_gpus_names_this_machines_processes(monkeypatch):
    """On several machines WORLD_SIZE counts every node's processes; the error names this machine's."""
    from numclip.core.errors import NumclipError
    from numclip.training.distributed import init_distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for key, value in {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "RANK": "7", "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(NumclipError, match=r"started 4 processes on this machine but it has 2 GPUs"):
        init_distributed(torch.device("cuda"))
