"""Evaluation: task registry, runner (scoring, aggregation, resume), generation, harness merge,
hub tasks on fixture files, the CLI and its errors.

Fast tests use fake generators (counting calls) and a tiny random-init Llama with the real
SmolLM2 tokenizer; the real embedded model runs only under ``-m slow``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from posttrain.cli import main as cli_main  # noqa: E402
from posttrain.config import ConfigError  # noqa: E402
from posttrain.data.formats import DataError  # noqa: E402
from posttrain.evaluation.harness import harness_results  # noqa: E402
from posttrain.evaluation.metrics import wilson_interval  # noqa: E402
from posttrain.evaluation.runner import aggregate, evaluate  # noqa: E402
from posttrain.evaluation.tasks import SUITES, TASKS, TaskContext, get_task, resolve_tasks  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
HUB_FIXTURES = {name: str(FIXTURES / f"{name}.jsonl") for name in ("gsm8k", "math500", "ifeval", "alpacaeval")}


class FakeGenerator:
    """Answers each prompt with ``answer(prompt_text)``; counts calls and prompts."""

    def __init__(self, answer):
        self.answer, self.calls, self.prompts = answer, 0, []

    def generate(self, prompts, max_new_tokens=256, temperature=0.0, top_p=1.0, num_samples=1, seed=0):
        self.calls += 1
        self.prompts += [p[-1]["content"] for p in prompts]
        return [[self.answer(p[-1]["content"]) for _ in range(num_samples)] for p in prompts]


def _gold_answers(task: str, **data_files) -> dict[str, str]:
    return {s["messages"][-1]["content"]: s["ground_truth"]
            for s in get_task(task).load(TaskContext(data_files=data_files or {}, limit=None))}


# --------------------------------------------------------------------------- registry


def test_registry_tags_and_suites():
    assert {"arith_builtin", "ifeval_builtin", "gsm8k", "math500", "ifeval", "alpacaeval"} <= set(SUITES["dev"])
    assert {"humaneval", "arith_hard_builtin"} <= set(SUITES["unseen"])
    assert not set(SUITES["dev"]) & set(SUITES["unseen"])
    assert resolve_tasks("dev") == (SUITES["dev"], True)
    assert resolve_tasks("arith_builtin, humaneval") == (["arith_builtin", "humaneval"], False)
    with pytest.raises(ConfigError, match="unknown task 'nope'. Known tasks: arith_builtin, "):
        resolve_tasks("arith_builtin,nope")


def test_builtin_test_splits_do_not_overlap_training_data():
    from posttrain.data.builtin import arithmetic_rlvr

    train = {r["messages"][0]["content"] for r in arithmetic_rlvr(split="train", n=500, difficulty=(1, 2, 3))}
    for task in ("arith_builtin", "arith_hard_builtin"):
        prompts = {s["messages"][0]["content"] for s in TASKS[task].load(TaskContext(limit=None))}
        assert len(prompts) == 100 and not prompts & train


# --------------------------------------------------------------------------- aggregation


def test_aggregate_ifeval_pass_at_k_and_winrate():
    ifeval = get_task("ifeval_builtin")
    records = [{"results": [{"score": 1.0, "strict": [True, True], "loose": [True, True]}]},
               {"results": [{"score": 0.5, "strict": [True, False], "loose": [True, True]}]},
               {"results": [{"score": 0.0, "strict": [False], "loose": [True]}]}]
    rows = {r["metric"]: r for r in aggregate(ifeval, records)}
    assert rows["prompt_level_strict"]["value"] == pytest.approx(1 / 3) and rows["prompt_level_strict"]["n"] == 3
    assert rows["inst_level_strict"]["value"] == pytest.approx(3 / 5) and rows["inst_level_strict"]["n"] == 5
    assert rows["prompt_level_loose"]["value"] == 1.0 and rows["inst_level_loose"]["value"] == 1.0
    assert (rows["inst_level_strict"]["low"], rows["inst_level_strict"]["high"]) == pytest.approx(wilson_interval(3, 5))

    # pass@k with n=5 samples: problem A has c=2 (pass@1 = 0.4, pass@2 = 0.7), problem B c=0
    he = get_task("humaneval")
    recs = [{"results": [{"score": s} for s in (1, 0, 1, 0, 0)]}, {"results": [{"score": 0}] * 5}]
    rows = {r["metric"]: r for r in aggregate(he, recs)}
    assert set(rows) == {"pass@1"}  # k=10 > n=5 is not reported
    assert rows["pass@1"]["value"] == pytest.approx(0.2)

    win = get_task("winrate")
    rows = aggregate(win, [{"win": 1.0}, {"win": 0.5}, {"win": 0.0}, {"win": 1.0}])
    assert rows[0]["metric"] == "win_rate" and rows[0]["value"] == pytest.approx(0.625) and rows[0]["n"] == 4


# --------------------------------------------------------------------------- HumanEval through the runner


def _canonical_predictions(tmp_path: Path, n: int | None) -> Path:
    from posttrain.data.humaneval import load_humaneval

    path = tmp_path / "preds.jsonl"
    rows = load_humaneval()[:n]
    path.write_text("".join(json.dumps({"task": "humaneval", "id": r["task_id"],
                                        "completion": "```python\n" + r["prompt"] + r["canonical_solution"] + "```"}) + "\n"
                            for r in rows))
    return path


def test_humaneval_canonical_solutions_score_pass1_of_one_through_the_cli(tmp_path, capsys):
    preds = _canonical_predictions(tmp_path, 20)
    out = tmp_path / "eval"
    rc = cli_main(["eval", "--predictions", str(preds), "--tasks", "humaneval", "--limit", "20", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    (row,) = result["rows"]
    assert (row["task"], row["metric"], row["value"], row["n"]) == ("humaneval", "pass@1", 1.0, 20)
    assert row["low"] == pytest.approx(wilson_interval(20, 20)[0])
    assert "humaneval" in (out / "results.md").read_text() and "pass@1" in capsys.readouterr().out
    assert len((out / "humaneval" / "samples.jsonl").read_text().splitlines()) == 20


@pytest.mark.slow
def test_humaneval_all_164_canonical_solutions(tmp_path):
    preds = _canonical_predictions(tmp_path, None)
    result = evaluate(None, "humaneval", tmp_path / "eval", predictions=str(preds))
    (row,) = result["rows"]
    assert (row["value"], row["n"]) == (1.0, 164)


def test_humaneval_pass_at_k_with_samples(tmp_path):
    from posttrain.data.humaneval import load_humaneval

    rows = load_humaneval()[:2]
    state = {"i": 0}

    def answer(prompt):  # alternate right / wrong: each problem gets 2 of its 4 samples right
        state["i"] += 1
        row = next(r for r in rows if r["prompt"] in prompt)
        return row["prompt"] + row["canonical_solution"] if state["i"] % 2 else "def nothing():\n    pass\n"

    gen = FakeGenerator(answer)
    result = evaluate(None, "humaneval", tmp_path, limit=2, generator=gen, num_samples=4)
    rows = {r["metric"]: r["value"] for r in result["rows"]}
    assert rows == {"pass@1": pytest.approx(0.5)}  # 2 of 4 right per problem; k=10 > n


# --------------------------------------------------------------------------- resume


def test_rerun_skips_finished_samples(tmp_path):
    gold = _gold_answers("arith_builtin")
    gen = FakeGenerator(lambda p: f"Let me add.\nThe answer is {gold[p]}.")
    first = evaluate(None, "arith_builtin", tmp_path, limit=10, batch_size=4, generator=gen)
    assert gen.calls == 3 and len(gen.prompts) == 10
    assert first["rows"][0]["value"] == 1.0 and first["tasks"]["arith_builtin"]["generated"] == 10

    again = evaluate(None, "arith_builtin", tmp_path, limit=10, batch_size=4, generator=gen)
    assert gen.calls == 3  # nothing regenerated
    assert again["tasks"]["arith_builtin"]["reused"] == 10 and again["rows"] == first["rows"]

    more = evaluate(None, "arith_builtin", tmp_path, limit=12, batch_size=4, generator=gen)
    assert gen.calls == 4 and len(gen.prompts) == 12  # only the 2 new samples
    assert more["rows"][0]["n"] == 12

    # a torn last line (a killed run) is dropped and its sample redone
    path = tmp_path / "arith_builtin" / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    evaluate(None, "arith_builtin", tmp_path, limit=12, batch_size=4, generator=gen)
    assert gen.calls == 5 and len(gen.prompts) == 13


def test_rerun_with_other_settings_is_refused(tmp_path):
    gen = FakeGenerator(lambda p: "42")
    evaluate(None, "arith_builtin", tmp_path, limit=2, generator=gen)
    with pytest.raises(ConfigError, match="other settings .*max_new_tokens.*--overwrite"):
        evaluate(None, "arith_builtin", tmp_path, limit=2, generator=gen, max_new_tokens=7)
    evaluate(None, "arith_builtin", tmp_path, limit=2, generator=gen, max_new_tokens=7, overwrite=True)


# --------------------------------------------------------------------------- hub tasks on fixture files


def test_hub_tasks_load_and_score_from_fixture_files(tmp_path):
    gsm = {s["messages"][-1]["content"]: s["ground_truth"].split("####")[-1].strip()
           for s in get_task("gsm8k").load(TaskContext(data_files=HUB_FIXTURES))}
    math = _gold_answers("math500", **HUB_FIXTURES)
    answers = {**{p: f"Step by step.\nAnswer: {a}" for p, a in gsm.items()},
               **{p: f"Final Answer: The final answer is ${a}$. I hope it is correct." for p, a in math.items()}}
    plain = "i am happy to help you plan a lovely trip to japan and i hope you enjoy every day of it"
    gen = FakeGenerator(lambda p: answers.get(p, plain))
    result = evaluate(None, ["gsm8k", "math500", "ifeval"], tmp_path, generator=gen, data_files=HUB_FIXTURES)
    rows = {(r["task"], r["metric"]): r for r in result["rows"]}
    assert rows[("gsm8k", "accuracy")]["value"] == 1.0 and rows[("gsm8k", "accuracy")]["n"] == 4
    assert rows[("math500", "accuracy")]["value"] == 1.0 and rows[("math500", "accuracy")]["n"] == 3
    # `plain` follows no_comma (3 prompts) and english_lowercase, but has no highlights, title,
    # placeholders or 300 words: instructions 3 + 1 of 7; only prompt 1001 (no_comma alone) passes
    assert rows[("ifeval", "prompt_level_strict")]["n"] == 4
    assert rows[("ifeval", "prompt_level_strict")]["value"] == pytest.approx(1 / 4)
    assert rows[("ifeval", "inst_level_strict")]["n"] == 7
    assert rows[("ifeval", "inst_level_strict")]["value"] == pytest.approx(3 / 7)
    assert result["tasks"]["ifeval"]["errors"] == 0


def test_alpacaeval_winrate_with_a_reward_model_judge(tmp_path, monkeypatch):
    import posttrain.rewards.reward_model as rm

    class LengthJudge:  # longer answer wins: the fixture references are one or two sentences
        def __init__(self, path, **kw):
            self.path = path

        def score(self, prompts, completions):
            assert all(isinstance(p, list) for p in prompts)
            return [float(len(c)) for c in completions]

    monkeypatch.setattr(rm, "RewardModelScorer", LengthJudge)
    refs = {s["messages"][-1]["content"]: s["reference"]
            for s in get_task("alpacaeval").load(TaskContext(data_files=HUB_FIXTURES))}
    first = next(iter(refs))
    gen = FakeGenerator(lambda p: refs[p] + " And more." if p == first else "ok")  # 1 win, 2 losses
    result = evaluate(None, "alpacaeval", tmp_path, generator=gen, data_files=HUB_FIXTURES, judge="judge-path")
    (row,) = result["rows"]
    assert (row["metric"], row["value"], row["n"]) == ("win_rate", pytest.approx(1 / 3), 3)
    with pytest.raises(ConfigError, match="needs --judge"):
        evaluate(None, "alpacaeval", tmp_path / "b", generator=gen, data_files=HUB_FIXTURES)


def test_rm_accuracy_scores_chosen_above_rejected(tmp_path, monkeypatch):
    import posttrain.rewards.reward_model as rm

    class CorrectnessJudge:
        def __init__(self, path, **kw):
            pass

        def score(self, prompts, completions):
            return [1.0 if "The answer is" in (c[-1]["content"] if isinstance(c, list) else c) else 0.0
                    for c in completions]

    monkeypatch.setattr(rm, "RewardModelScorer", CorrectnessJudge)
    result = evaluate(None, "rm_accuracy", tmp_path, limit=20, reward_model="rm-path")
    (row,) = result["rows"]
    assert row["metric"] == "accuracy" and row["n"] == 20
    # arithmetic pairs both end "The answer is", so ties (wrong); the IFEval half is coin-free
    assert 0.0 <= row["value"] <= 1.0
    with pytest.raises(ConfigError, match="needs --reward-model"):
        evaluate(None, "rm_accuracy", tmp_path / "b", limit=2)


def test_suite_skips_what_cannot_run_offline(tmp_path):
    gen = FakeGenerator(lambda p: "The answer is 3.")
    result = evaluate(None, "dev", tmp_path, limit=3, generator=gen)
    status = {n: r["status"] for n, r in result["tasks"].items()}
    assert status["arith_builtin"] == status["ifeval_builtin"] == "ok"
    for name in ("gsm8k", "math500", "ifeval", "alpacaeval", "winrate"):
        assert status[name] == "skipped", name
    assert result["tasks"]["gsm8k"]["reason"] == "hub set openai/gsm8k offline; give --data-file gsm8k=FILE"
    assert "--judge" in result["tasks"]["alpacaeval"]["reason"]
    md = (tmp_path / "results.md").read_text()
    assert "| gsm8k | dev | skipped:" in md and "| arith_builtin | dev | accuracy |" in md


# --------------------------------------------------------------------------- lm-eval harness


FAKE_LM_EVAL = {
    "results": {
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.6, "acc_stderr,none": 0.05,
                     "acc_norm,none": 0.55, "acc_norm_stderr,none": "N/A"},
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.02},
    },
    "n-samples": {"arc_easy": {"original": 2376, "effective": 100}, "gsm8k": {"original": 1319, "effective": 50}},
}


def test_harness_results_merge_into_rows():
    tasks = harness_results(FAKE_LM_EVAL)
    arc = {m["metric"]: m for m in tasks["lm_eval:arc_easy"]["metrics"]}
    assert arc["acc"]["value"] == 0.6 and arc["acc"]["n"] == 100
    assert arc["acc"]["low"] == pytest.approx(0.6 - 1.959964 * 0.05) and arc["acc"]["high"] == pytest.approx(0.6 + 1.959964 * 0.05)
    assert arc["acc_norm"]["low"] == arc["acc_norm"]["high"] == 0.55  # no stderr: no interval
    gsm = tasks["lm_eval:gsm8k"]["metrics"]
    assert [m["metric"] for m in gsm] == ["exact_match (strict-match)"] and gsm[0]["n"] == 50
    assert all(t["tag"] == "harness" for t in tasks.values())


def test_harness_merges_with_native_tasks(tmp_path, monkeypatch):
    import posttrain.evaluation.harness as harness

    monkeypatch.setattr(harness, "run_harness", lambda name, run, tasks, limit=None: FAKE_LM_EVAL)
    monkeypatch.setattr(harness, "require_harness", lambda name: None)
    gen = FakeGenerator(lambda p: "The answer is 1.")
    result = evaluate(None, "arith_builtin", tmp_path, limit=2, generator=gen, harness="lm_eval",
                      harness_tasks=["arc_easy", "gsm8k"])
    assert {r["task"] for r in result["rows"]} == {"arith_builtin", "lm_eval:arc_easy", "lm_eval:gsm8k"}
    assert "lm_eval:arc_easy | harness | acc" in (tmp_path / "results.md").read_text()


def test_harness_without_lm_eval_says_pip_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    rc = cli_main(["eval", "--model", "smollm2-135m-instruct", "--harness", "lm_eval", "--tasks", "arc_easy",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install lm-eval" in err[0]


# --------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize("argv, message", [
    (["--model", "x", "--tasks", "nope"], "unknown task 'nope'. Known tasks: arith_builtin"),
    (["--model", "x", "--tasks", "gsm8k", "--data-file", "/no/such/gsm8k.jsonl"], "data file /no/such/gsm8k.jsonl"),
    (["--model", "./no/such/model", "--tasks", "arith_builtin", "--limit", "1"], "model path './no/such/model' does not exist"),
    (["--tasks", "arith_builtin"], "give --model (or --predictions FILE)"),
    (["--predictions", "{preds}", "--tasks", "gsm8k"], "task gsm8k: dataset 'openai/gsm8k' (split 'test') could not"),
    (["--predictions", "{preds}", "--tasks", "arith_builtin"], "predictions file has no completion for task 'arith_builtin'"),
])
def test_cli_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"task": "humaneval", "id": "HumanEval/0", "completion": "pass"}) + "\n")
    argv = [a.replace("{preds}", str(preds)) for a in argv]
    rc = cli_main(["eval", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()  # progress lines may come first
    assert rc == 2
    assert [e for e in err if "error" in e] == err[-1:], err
    assert err[-1].startswith("posttrain eval: error:") and message in err[-1], err


def test_cli_help_lists_tasks_and_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    out = capsys.readouterr().out
    for word in ("--suite", "--tasks", "--limit", "--batch-size", "--seed", "--max-new-tokens", "--harness",
                 "--judge", "--reference-model", "--data-file", "arith_builtin", "[unseen]"):
        assert word in out


# --------------------------------------------------------------------------- a real (tiny) model


# tiny_model_dir: the shared session fixture in conftest.py (tiny Llama + SmolLM2 tokenizer).


def test_batched_greedy_generation_matches_one_at_a_time(tiny_model_dir):
    from posttrain.evaluation.generation import HFGenerator
    from posttrain.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    prompts = [[{"role": "user", "content": t}] for t in ("Hi", "What is 2 + 2? Think carefully about it.", "Tell me a story")]
    batched = HFGenerator(model, tok, batch_size=3).generate(prompts, max_new_tokens=8)
    single = HFGenerator(model, tok, batch_size=1).generate(prompts, max_new_tokens=8)
    assert batched == single and all(len(c) == 1 for c in batched)
    sampled = HFGenerator(model, tok, batch_size=2)
    a = sampled.generate(prompts, max_new_tokens=6, temperature=1.0, num_samples=2, seed=3)
    assert a == sampled.generate(prompts, max_new_tokens=6, temperature=1.0, num_samples=2, seed=3)
    assert all(len(c) == 2 for c in a)


def test_loglikelihood_matches_a_manual_forward_pass(tiny_model_dir):
    import torch

    from posttrain.evaluation.generation import HFGenerator, render_prompts
    from posttrain.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    gen = HFGenerator(model, tok, batch_size=2)
    prompt = [{"role": "user", "content": "What is 3 + 4?"}]
    longer = [{"role": "user", "content": "Sam has 12 apples and buys 9 more bags of 3. How many now?"}]
    other = [{"role": "user", "content": "Say hi."}]
    # three prompts of different lengths (two batches of prompts), choices interleaved and uneven:
    # each continuation runs on a copy of its own prompt's cache
    requests = [(prompt, "The answer is 7."), (longer, "39"), (prompt, "The answer is 12345 apples."),
                (other, "hi"), (longer, "The answer is 39, since 12 + 27 = 39."), (prompt, "7")]
    got = gen.loglikelihood(requests)
    assert gen.loglikelihood(requests[::-1]) == pytest.approx(got[::-1], abs=1e-4)
    for (p, cont), value in zip(requests, got):
        p_ids = tok(render_prompts(tok, [p])[0], add_special_tokens=False)["input_ids"]
        c_ids = tok(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logps = model(ids).logits.log_softmax(-1)[0]
        want = sum(logps[len(p_ids) + j - 1, t].item() for j, t in enumerate(c_ids))
        assert value == pytest.approx(want, abs=1e-4)


def test_eval_cli_with_a_tiny_model_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli_main(["eval", "--model", str(tiny_model_dir), "--tasks", "arith_builtin,arith_mc_builtin",
                   "--limit", "4", "--max-new-tokens", "4", "--batch-size", "2", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    assert {(r["task"], r["n"]) for r in result["rows"]} == {("arith_builtin", 4), ("arith_mc_builtin", 4)}
    records = [json.loads(x) for x in (out / "arith_builtin" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["completions"]) == 1 and "score" in r["results"][0] for r in records)
    mc = [json.loads(x) for x in (out / "arith_mc_builtin" / "samples.jsonl").read_text().splitlines()]
    assert all(len(r["logprobs"]) == 4 and r["pred"] == max(range(4), key=r["logprobs"].__getitem__) for r in mc)
    assert "arith_builtin" in capsys.readouterr().out


def test_evaluate_accepts_a_loaded_model_and_tokenizer(tiny_model_dir, tmp_path):
    from posttrain.models import load_model, load_tokenizer

    pair = (load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)))
    result = evaluate(pair, "ifeval_builtin", tmp_path, limit=2, max_new_tokens=4)
    assert {r["metric"] for r in result["rows"]} == {"prompt_level_strict", "inst_level_strict",
                                                       "prompt_level_loose", "inst_level_loose"}


# --------------------------------------------------------------------------- the real embedded model


@pytest.mark.slow
def test_embedded_model_dev_builtins(tmp_path):
    result = evaluate("smollm2-135m-instruct", "arith_easy_builtin,ifeval_builtin", tmp_path, limit=32)
    rows = {(r["task"], r["metric"]): r["value"] for r in result["rows"]}
    # The base model gets about a third of single-digit sums right (0.33 on 100): > 0.1 at n=32
    # fails by chance with probability < 1e-3.
    assert rows[("arith_easy_builtin", "accuracy")] > 0.1
    assert ("ifeval_builtin", "prompt_level_loose") in rows
