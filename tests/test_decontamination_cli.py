"""``posttrain decontaminate`` and ``posttrain data inspect`` end to end through the CLI, on
training data with planted contamination and duplicates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from posttrain.cli import main as cli_main  # noqa: E402
from posttrain.data.builtin import arithmetic_sft  # noqa: E402
from posttrain.data.humaneval import load_humaneval  # noqa: E402
from posttrain.evaluation.tasks import task_prompts  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _chat(user: str, assistant: str = "Sure.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def planted(tmp_path):
    """20 clean SFT rows with 3 planted leaks at rows 4, 9 and 15: a HumanEval prompt inside a
    longer message, an IFEval-style test prompt verbatim, and a GSM8K question paraphrased at
    the end (most of its 8-grams kept)."""
    rows = [{"messages": r["messages"]} for r in arithmetic_sft(split="train", n=20, seed=3)]
    he = load_humaneval()[7]["prompt"]
    ifeval = task_prompts("ifeval_builtin")[5]
    gsm = json.loads((FIXTURES / "gsm8k.jsonl").read_text().splitlines()[0])["question"]
    rows.insert(4, _chat("Please finish this code for me:\n" + he, "def f(): pass"))
    rows.insert(9, _chat(ifeval, "ok"))
    rows.insert(15, _chat(gsm.replace("altogether in April and May?", "in total over both months?")))
    rows = rows[:23]
    return _write_jsonl(tmp_path / "train.jsonl", rows), rows


def test_planted_contamination_is_found_reported_and_removed(tmp_path, planted, capsys):
    train_path, rows = planted
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"prompt": "Tell me a joke about cats and dogs.", "completion": "No."}]))
    report, clean = tmp_path / "report.json", tmp_path / "clean"
    rc = cli_main(["decontaminate", "--train", str(train_path), str(other),
                   "--eval", "humaneval", "ifeval_builtin", f"gsm8k={FIXTURES / 'gsm8k.jsonl'}",
                   "--ngram", "8", "--threshold", "0.5", "--report", str(report), "--write-clean", str(clean)])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(report.read_text())
    flagged = data["sources"][str(train_path)]["flagged"]
    assert sorted({f["row"] for f in flagged}) == [4, 9, 15]
    assert {f["row"]: f["eval_set"] for f in flagged} == {4: "humaneval", 9: "ifeval_builtin", 15: "gsm8k"}
    assert all(f["snippet"] and f["score"] >= 0.5 for f in flagged)
    assert data["sources"][str(other)]["contaminated_rows"] == 0
    assert "decontamination" in out and "humaneval" in out

    kept = [json.loads(x) for x in (clean / "train.jsonl").read_text().splitlines()]
    assert kept == [r for i, r in enumerate(rows) if i not in (4, 9, 15)]  # order and content kept
    assert json.loads((clean / "other.json").read_text()) == json.loads(other.read_text())  # same format


def test_exact_mode_and_an_eval_source_file(tmp_path, capsys):
    evals = _write_jsonl(tmp_path / "eval.jsonl", [{"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
                                                  {"messages": [{"role": "user", "content": "Name a colour."}]}])
    train = _write_jsonl(tmp_path / "t.jsonl", [_chat("what is 2+2 ?"), _chat("What is 2 + 3?"), _chat("Name a colour!")])
    rc = cli_main(["decontaminate", "--train", str(train), "--eval", str(evals), "--mode", "exact",
                   "--report", str(tmp_path / "r.json"), "--write-clean", str(tmp_path / "c")])
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert sorted({f["row"] for f in data["sources"][str(train)]["flagged"]}) == [0, 2]
    assert len((tmp_path / "c" / "t.jsonl").read_text().splitlines()) == 1


def test_decontaminate_errors(tmp_path, capsys):
    rc = cli_main(["decontaminate", "--train", str(tmp_path / "missing.jsonl"), "--eval", "humaneval"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.jsonl does not exist" in err[0]
    rc = cli_main(["decontaminate", "--train", "builtin:arithmetic_sft", "--eval", "humaneval", "--threshold", "2"])
    assert rc == 2 and "--threshold must be in (0, 1]" in capsys.readouterr().err


def test_decontaminate_help_documents_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["decontaminate", "--help"])
    out = capsys.readouterr().out
    for word in ("--train", "--eval", "--ngram", "--threshold", "--mode", "--report", "--write-clean", "minhash"):
        assert word in out


def test_data_inspect_reports_lengths_duplicates_language_and_contamination(tmp_path, capsys):
    rows = [{"messages": r["messages"]} for r in arithmetic_sft(split="train", n=30, seed=5)]
    long = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the "
            "green field near the old river bridge every single morning before breakfast.")
    rows += [rows[0], rows[1],  # two exact duplicates
             _chat(long), _chat(long.replace("breakfast", "lunch")),  # a near-duplicate pair
             _chat(load_humaneval()[3]["prompt"])]  # a leak
    src = _write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "inspect"
    rc = cli_main(["data", "inspect", str(src), "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == 35 and report["kinds"] == {"sft": 35}
    assert report["length_unit"].startswith("tokens") and report["lengths"]["max"] > report["lengths"]["min"] > 0
    assert report["turns"]["min"] == report["turns"]["max"] == 2
    assert report["duplicates"]["exact_duplicate_rows"] == 2
    assert report["duplicates"]["near_duplicate_pairs"] == 1
    assert report["languages"]["counts"].get("en", 0) >= 30
    sets = {s["eval_set"]: s for s in report["contamination"]["sets"]}
    assert sets["humaneval"]["contaminated_rows"] == 1 and sets["ifeval_builtin"]["contaminated_rows"] == 0
    assert "gsm8k" in report["contamination"]["skipped"]  # hub set, offline
    md = (out / "report.md").read_text()
    assert "![lengths](lengths.png)" in md and "near-duplicate pairs" in md
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_data_inspect_whitespace_fallback_and_missing_source(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "one two three"}, {"text": "four five"}])
    assert cli_main(["data", "inspect", str(src), "--tokenizer", "whitespace", "--no-contamination"]) == 0
    out = capsys.readouterr().out
    assert "whitespace words" in out
    rc = cli_main(["data", "inspect", str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.jsonl does not exist" in err[0]
