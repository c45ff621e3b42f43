"""benchmarks/step_throughput.py on the tiny architecture: plain fine-tuning and one method (cropped and
full context) are measured in this process, the table and CSV hold one row each with positive numbers
and ratios to plain fine-tuning, and the hidden child mode (`--one`) returns one configuration's result."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("step_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_table_has_plain_fine_tuning_and_the_method_both_ways(bench, tmp_path):
    out, rows = bench.run("numclip-tiny", batch=2, ranks=4, steps=1, warmup=1, repeats=1, methods=["coop"],
                          out_dir=tmp_path, command="test", isolate=False, log=lambda line: None)
    assert [(r["configuration"], r["cropping"]) for r in rows] == [
        (bench.PLAIN, "full context (open_clip)"), ("coop", "on"), ("coop", "off")]
    for row in rows:
        assert row["images_per_s"] > 0 and row["step_s"] > 0 and row["process_peak_mib"] > 0
        assert row["peak_mib"] >= 0 and row["speed_vs_plain"] > 0
        assert row["images_per_s"] == pytest.approx(2 / row["step_s"])
    assert rows[0]["speed_vs_plain"] == rows[0]["memory_vs_plain"] == 1.0
    assert rows[1]["text_pass"] == "4 prompts × 7 tokens" and rows[2]["text_pass"] == "4 prompts × 32 tokens"
    assert rows[0]["text_pass"] == "2 captions × 32 tokens", "plain fine-tuning runs the full context"

    table = out.read_text(encoding="utf-8")
    assert out.name == "step_throughput_cpu.md" and "- command: `test`" in table and "torch " in table
    assert "| configuration | cropping | images/s | step seconds (median) | peak memory (MiB) |" in table
    assert "| images/s ÷ plain FT | memory ÷ plain FT |" in table
    assert sum(line.startswith(("| plain fine-tuning |", "| coop |")) for line in table.splitlines()) == 3
    with out.with_suffix(".csv").open(encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [r["configuration"] for r in written] == [bench.PLAIN, "coop", "coop"]
    assert all(float(r["images_per_s"]) > 0 and r["arch"] == "numclip-tiny" for r in written)


def test_one_configuration_in_a_fresh_process(bench):
    job = {"spec": {"config": bench.PLAIN, "crop": None}, "arch": "numclip-tiny", "batch": 2, "ranks": 4,
           "warmup": 0, "steps": 1, "threads": 1}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--one", json.dumps(job)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1].removeprefix(bench.MARK))
    assert len(result["seconds"]) == 1 and result["seconds"][0] > 0
    assert result["process_mib"] > result["step_mib"] > 0, "a fresh process: the step's memory shows in its RSS"
    assert result["memory"].startswith("peak RSS")


def test_unknown_method_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="zeroshot"):
        bench.run("numclip-tiny", batch=2, ranks=4, methods=["zeroshot"], out_dir=tmp_path, isolate=False)
