"""The GPU suite's kit stays working without a GPU: ``bench/gpu_suite.py --dry-run`` writes every
part into results.json and results.md (the GPU tests recorded as skipped, one tiny timing run),
and a part that runs past its budget is cut alone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_every_part(suite, tmp_path, monkeypatch):
    monkeypatch.delenv("POSTTRAIN_GPU_TESTS_ON_CPU", raising=False)
    out = tmp_path / "out"
    suite.main(["--out", str(out), "--dry-run", "--benches", "sft", "--sides", "posttrain", "--budget", "300"])
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "suite.log"]
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    assert results["dry_run"] is True
    for name in ("machine", "tests", "timings/model", "timings/sft/posttrain"):
        assert parts[name]["status"] == "ok", (name, parts[name], (out / "suite.log").read_text()[-3000:])
    assert parts["timings"]["status"] == "ok"
    machine = results["machine"]
    assert machine["versions"]["torch"] and machine["cuda_available"] is False
    assert machine["imports"]["posttrain"] == "ok"
    # every GPU test is collected and recorded as skipped (no CUDA in a dry run)
    names = {t["test"].split("::")[1].split("[")[0] for t in results["tests"]}
    assert {"test_bf16_sft_step_matches_fp32", "test_packed_rows_equal_each_conversation_alone",
            "test_static_cache_generation_equals_dynamic", "test_chunked_head_equals_plain_cross_entropy",
            "test_sharded_run_saves_a_checkpoint_that_reloads_equal"} <= names
    assert {t["outcome"] for t in results["tests"]} == {"skipped"}
    row = results["timings"]["sft"]["posttrain"]
    assert row["tokens/s"] > 0 and row["MFU"] is None   # no MFU without a GPU
    assert [t["target"] for t in results["targets"]][:3] == [
        "SFT MFU (posttrain)", "DPO pairs/s posttrain / TRL", "GRPO steps/s posttrain / TRL"]
    assert all(t["met"] is None for t in results["targets"])
    markdown = (out / "results.md").read_text()
    for heading in ("# GPU suite (dry run", "## Parts", "## GPU tests", "## Timings", "## Targets (issue 22)"):
        assert heading in markdown
    assert "| sft | posttrain |" in markdown and "| dpo | trl | not run |" in markdown


def test_a_part_past_its_budget_is_cut_and_the_suite_goes_on(suite, tmp_path):
    s = suite.Suite(suite.parse_args(["--out", str(tmp_path), "--dry-run", "--budget", "60"]))
    s.budgets["slow"] = 1.0
    record = s.run("slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert record["status"] == "cut" and record["seconds"] < 30 and "budget" in record["reason"]
    assert s.run("quick", [sys.executable, "-c", "pass"])["status"] == "ok"
    s.budget = 0
    assert s.run("late", [sys.executable, "-c", "pass"])["status"] == "cut"


def test_unknown_part_names_are_refused(suite):
    with pytest.raises(SystemExit):
        suite.parse_args(["--out", "x", "--benches", "sft,ppo"])
