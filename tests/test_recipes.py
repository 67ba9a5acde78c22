"""Recipes: the tulu3-8b numbers, the Reward Report's checks, and a tiny end-to-end recipe run."""

import json

import pytest
import torch
import yaml

from posttrain.recipes.runner import load_recipe, run
from posttrain.reports.reward_report import hacking_signs, objective_mismatch, tasks_fallen, write_reward_report


def test_tulu3_8b_recipe_parses_validates_and_carries_the_published_numbers():
    recipe = load_recipe("tulu3-8b")
    stages = {s["name"]: s for s in recipe["stages"]}
    sft = stages["sft"]["resolved"]
    assert stages["sft"]["data"][0]["source"] == "allenai/tulu-3-sft-mixture"
    assert (sft.learning_rate, sft.lr_schedule, sft.warmup_ratio, sft.num_epochs, sft.max_length,
            sft.loss_reduction) == (5e-6, "linear", 0.03, 2, 4096, "sum")
    assert sft.batch_size * sft.gradient_accumulation_steps * 8 == 128
    dpo = stages["dpo"]["resolved"]
    assert stages["dpo"]["data"][0]["source"] == "allenai/llama-3.1-tulu-3-8b-preference-mixture"
    assert (dpo.loss_type, dpo.beta, dpo.learning_rate, dpo.warmup_ratio, dpo.num_epochs, dpo.max_length) == \
        ("dpo_norm", 5.0, 5e-7, 0.1, 1, 2048)
    assert dpo.batch_size * dpo.gradient_accumulation_steps * 8 == 128
    rl = stages["rlvr"]["resolved"]
    assert stages["rlvr"]["command"] == "ppo"
    assert stages["rlvr"]["data"][0]["source"] == "allenai/RLVR-GSM-MATH-IF-Mixed-Constraints"
    assert (rl.beta, rl.learning_rate, rl.verifiable_reward, rl.max_new_tokens, rl.temperature) == \
        (0.05, 3e-7, 10.0, 2048, 1.0)
    assert rl.value_model == "allenai/Llama-3.1-Tulu-3-8B-RM"


def test_unknown_recipe_lists_known_ones():
    from posttrain.config import ConfigError

    with pytest.raises(ConfigError, match="unknown recipe 'tulu4'.*tulu3-mini"):
        load_recipe("tulu4")


def test_objective_mismatch_flags_reward_up_heldout_down_only():
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert objective_mismatch(rising, [0.60, 0.55, 0.40])["flag"] is True
    assert objective_mismatch(rising, [0.40, 0.50, 0.60])["flag"] is False      # both rise
    assert objective_mismatch([0.5] * 6, [0.6, 0.4])["flag"] is False          # reward flat
    result = objective_mismatch(rising, [0.60, 0.40])
    assert result["reward_delta"] == pytest.approx(0.55 - 0.15) and result["heldout_delta"] == pytest.approx(-0.2)
    # with the held-out size known, a fall counts only below the starting 95% Wilson interval:
    # 25/30 → 22/30 is noise (Wilson lower end of 25/30 is 0.664), 25/30 → 18/30 is not
    noise = objective_mismatch(rising, [25 / 30, 22 / 30], heldout_n=30)
    assert noise["flag"] is False and noise["heldout_floor"] == pytest.approx(0.6644, abs=1e-3)
    assert objective_mismatch(rising, [25 / 30, 18 / 30], heldout_n=30)["flag"] is True
    assert objective_mismatch(rising, [25 / 30, 22 / 30])["flag"] is True   # size unknown: the 0.02 tolerance


def test_hacking_signs_length_blowup_and_truncation():
    assert hacking_signs([10, 10, 12, 30, 40, 45], [0.0, 0.0, 0.1, 0.3, 0.4, 0.5])["signs"] != []
    assert hacking_signs([10, 11, 10, 12, 11, 10], [0.0] * 6)["signs"] == []


def test_length_collapse_is_a_hacking_sign_only_under_a_similarity_reward():
    # first third 25, last third 12: 0.48x — a lead-sentence copy under ROUGE, a learnt format under a check
    lengths, truncated = [26, 24, 18, 15, 12, 12], [0.0] * 6
    signs = hacking_signs(lengths, truncated, similarity=True)["signs"]
    assert len(signs) == 1 and signs[0].startswith("response length shrank to 0.48x (first third 25.0 → last third 12.0")
    assert hacking_signs(lengths, truncated)["signs"] == []
    assert hacking_signs([20, 20, 19, 18, 17, 16], truncated, similarity=True)["signs"] == []   # 0.82x: no sign


def _fake_rl_run(tmp_path, rewards, heldout):
    run_dir = tmp_path / "rl"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward_mean": r, "response_length": 20,
                                                               "truncated_share": 0.0}) + "\n"
                                                   for i, r in enumerate(rewards)))
    (run_dir / "reward_report_inputs.json").write_text(json.dumps({
        "algorithm": "grpo", "model": "m", "reward_components": [{"name": "gsm8k", "kind": "verifier",
                                                                    "target": "gsm8k", "weight": 1.0}],
        "kl": {"beta": 0.0}, "heldout": [{"step": s, "accuracy": a} for s, a in heldout]}))
    return run_dir


def test_reward_report_flags_mismatch_in_the_written_report(tmp_path):
    bad = _fake_rl_run(tmp_path / "a", [0.1, 0.3, 0.5, 0.7], [(0, 0.6), (4, 0.4)])
    text = write_reward_report(bad).read_text()
    assert "**Objective mismatch**" in text and "| gsm8k | verifier |" in text
    good = _fake_rl_run(tmp_path / "b", [0.1, 0.3, 0.5, 0.7], [(0, 0.4), (4, 0.6)])
    assert "Objective mismatch: not flagged" in write_reward_report(good).read_text()


def _summary(*rows):
    return {"rows": [{"task": t, "metric": m, "value": v, "n": 32, "low": lo, "high": hi} for t, m, v, lo, hi in rows]}


def test_reward_report_flags_an_other_task_falling_beyond_its_interval(tmp_path):
    # The tulu3-mini failure seen on 2026-11-23: RLVR on single-digit sums lifted arith_easy while
    # the unseen arith_hard fell 0.406 → 0.000; the in-run held-out split (the optimised task) rose.
    before = _summary(("arith_easy", "accuracy", 0.79, 0.70, 0.86), ("arith_easy", "other", 0.5, 0.4, 0.6),
                      ("arith_hard", "accuracy", 0.406, 0.255, 0.577), ("ifeval", "prompt_level_strict", 0.34, 0.20, 0.52))
    after = _summary(("arith_easy", "accuracy", 0.89, 0.81, 0.94), ("arith_easy", "other", 0.1, 0.0, 0.2),
                     ("arith_hard", "accuracy", 0.0, 0.0, 0.107), ("ifeval", "prompt_level_strict", 0.25, 0.13, 0.42))
    fallen = tasks_fallen(before, after)
    # only the primary (first) metric per task counts, and ifeval's 0.34 → 0.25 stays inside [0.20, 0.52]
    assert [(f["task"], f["before"], f["after"]) for f in fallen] == [("arith_hard", 0.406, 0.0)]

    run = _fake_rl_run(tmp_path / "a", [0.1, 0.3, 0.5, 0.7], [(0, 0.6), (4, 0.8)])
    text = write_reward_report(run, before=before, after=after).read_text()
    assert "**Objective mismatch on `arith_hard`**" in text and "0.406 to 0.000" in text
    assert "| arith_hard | accuracy | 32 | 0.406 [0.255, 0.577] | 0.000 [0.000, 0.107] |" in text
    assert json.loads((run / "reward_report.json").read_text())["tasks_fallen"][0]["task"] == "arith_hard"
    # reward flat: a fall elsewhere is not the reward's doing, so no mismatch flag
    flat = _fake_rl_run(tmp_path / "b", [0.5, 0.5, 0.5, 0.5], [(0, 0.6), (4, 0.6)])
    text = write_reward_report(flat, before=before, after=after).read_text()
    assert "Objective mismatch on" not in text
    # both tasks rise: no flag
    up = _fake_rl_run(tmp_path / "c", [0.1, 0.3, 0.5, 0.7], [(0, 0.6), (4, 0.8)])
    assert "Objective mismatch on" not in write_reward_report(up, before=before, after=before).read_text()


def tiny_recipe(model_dir: str) -> dict:
    return {
        "name": "tiny", "model": model_dir, "seed": 0,
        "evaluation": {"dev": ["arith_easy_builtin"], "limit": {"arith_easy_builtin": 4},
                       "max_new_tokens": {"arith_easy_builtin": 8}, "batch_size": 4},
        "decontaminate": {"ngram": 8, "threshold": 0.5},
        "stages": [
            {"name": "sft", "command": "sft", "data": [{"source": "builtin:arithmetic_sft", "count": 16}],
             "config": {"max_steps": 2, "batch_size": 2, "max_length": 96, "progress": False}},
            {"name": "dpo", "command": "dpo", "data": [{"source": "builtin:arithmetic_preference", "count": 8}],
             "config": {"max_steps": 1, "batch_size": 2, "max_length": 96, "progress": False,
                        "loss_type": "dpo_norm", "beta": 5.0, "max_prompt_length": 64}},
            {"name": "rlvr", "command": "grpo", "data": [{"source": "builtin:arithmetic_rlvr", "count": 8}],
             "config": {"max_steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8,
                        "progress": False, "eval_data": [{"source": "builtin:arithmetic_rlvr:test", "n": 4}]}},
        ],
    }


def test_paired_comparisons_join_stages_on_item_ids(tmp_path):
    """Two stages' samples files, items in different orders: 3 items fixed, 1 broken, 1 unchanged
    → wins 3, losses 1, ties 1, sign test p = 2 · (1 + 4) / 16 = 0.625."""
    from posttrain.reports.recipe import paired_comparisons

    def stage(name, scores):
        path = tmp_path / name / "samples.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"id": i, "results": [{"score": s}]}) + "\n" for i, s in scores.items()))
        return {"tasks": {"arith_easy_builtin": {"samples_file": str(path)}}}

    evals = {"base": stage("base", {"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0, "e": 1.0}),
             "sft": stage("sft", {"e": 1.0, "d": 0.0, "c": 1.0, "b": 1.0, "a": 1.0})}
    assert paired_comparisons(evals) == [{"task": "arith_easy_builtin", "metric": "accuracy", "before": "base",
                                          "after": "sft", "n": 5, "wins": 3, "losses": 1, "ties": 1, "p": 0.625}]


def test_tiny_recipe_runs_end_to_end_and_skips_finished_stages(tmp_path, tiny_model_dir, monkeypatch):
    recipe = tiny_recipe(tiny_model_dir)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    report = run(str(path), out).read_text()
    for stage in ("base", "sft", "dpo", "rlvr"):
        assert stage in report
    assert (out / "rlvr" / "reward_report.md").exists() and (out / "eval_per_stage.png").exists()
    assert "## Decontamination" in report
    paired = json.loads((out / "results.json").read_text())["paired"]
    assert [(r["before"], r["after"]) for r in paired if r["task"] == paired[0]["task"]] == \
        [("base", "sft"), ("sft", "dpo"), ("dpo", "rlvr")]
    assert all(r["wins"] + r["losses"] + r["ties"] == r["n"] > 0 for r in paired)
    assert "## Paired comparisons" in report
    seconds = json.loads((out / "results.json").read_text())["seconds"]
    assert list(seconds) == ["decontaminate", "eval base", "train sft", "eval sft", "train dpo", "eval dpo",
                             "train rlvr", "eval rlvr"]
    assert all(s > 0 for step, s in seconds.items() if step.startswith(("train", "eval")))
    assert "## Time" in report and "| train rlvr |" in report

    # A second run redoes nothing: no trainer is called, and its time table has no training row.
    from posttrain.train import sft as sft_mod

    monkeypatch.setattr(sft_mod, "run_sft", lambda *a, **k: pytest.fail("finished stage retrained"))
    run(str(path), out)
    assert not any(step.startswith("train") for step in json.loads((out / "results.json").read_text())["seconds"])


def test_killed_recipe_reruns_without_redoing_finished_stages(tmp_path, tiny_model_dir, monkeypatch):
    """Kill the recipe process (SIGKILL) once SFT is finished, re-run it: SFT is not retrained and
    the final evaluation equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir)))
    straight = tmp_path / "straight"
    run(str(path), straight)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", "import sys; from posttrain.cli import main; "
                                f"sys.exit(main(['recipe', 'run', {str(path)!r}, '--out', {str(killed)!r}]))"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 300
    while not (killed / "sft" / "DONE").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (killed / "sft" / "DONE").exists(), "the recipe process never finished its SFT stage"
    process.send_signal(signal.SIGKILL)
    process.wait()
    sft_model = (killed / "sft" / "model" / "model.safetensors").stat().st_mtime_ns

    from posttrain.train import sft as sft_mod

    monkeypatch.setattr(sft_mod, "run_sft", lambda *a, **k: pytest.fail("finished stage retrained"))
    run(str(path), killed)
    assert (killed / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == sft_model
    for stage in ("base", "sft", "dpo", "rlvr"):
        want = json.loads((straight / "eval" / stage / "results.json").read_text())["rows"]
        got = json.loads((killed / "eval" / stage / "results.json").read_text())["rows"]
        assert [r["value"] for r in got] == pytest.approx([r["value"] for r in want]), stage
    from safetensors.torch import load_file

    want, got = (load_file(str(d / "rlvr" / "model" / "model.safetensors")) for d in (straight, killed))
    for name in want:  # the stages that re-ran from the killed point retrain to the same weights
        assert torch.allclose(got[name], want[name], atol=1e-6), name


def test_heldout_start_and_end_of_a_stage():
    from posttrain.reports.recipe import heldout_start_end

    records = [{"step": 0, "eval_preference/accuracy": 0.0, "eval_accuracy": 0.5},
               {"step": 1, "loss": 0.7}, {"step": 2, "eval_preference/accuracy": 0.75, "eval_accuracy": 0.625}]
    assert heldout_start_end(records, "online-dpo") == [("preference accuracy (implicit reward)", 0.0, 0.75),
                                                        ("verifier accuracy (greedy)", 0.5, 0.625)]
    # posttrain dpo: its start on the last record as start_eval_*; one evaluation alone is no change
    assert heldout_start_end([{"step": 4, "eval_accuracy": 0.9, "start_eval_accuracy": 0.4}], "dpo") == \
        [("preference accuracy (implicit reward)", 0.4, 0.9)]
    assert heldout_start_end([{"step": 4, "eval_accuracy": 0.9}], "rl") == []
