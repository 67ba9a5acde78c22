"""GRUE-style tasks: the built-in commongen_mini / summary_mini sets (splits disjoint, their rows
valid for RL and SFT, the reference answers scoring full marks), the concept_coverage verifier on
a table of rows, and the hub loaders of CommonGen, CNN/DailyMail and IMDB on fixture files in their
own schemas (no network)."""

from __future__ import annotations

import json

import pytest

from posttrain.data.formats import DataError, validate_rows
from posttrain.data.sources import load_source, mix_sources
from posttrain.rewards import get_verifier


@pytest.mark.parametrize("name", ["commongen_mini", "summary_mini"])
def test_builtin_grue_sets_have_disjoint_splits_valid_rows_and_perfect_references(name):
    train = load_source(f"builtin:{name}_rlvr", split="train", n=150)
    test = load_source(f"builtin:{name}_rlvr:test", n=40)
    prompts = lambda rows: {r["messages"][0]["content"] for r in rows}  # noqa: E731
    assert len(prompts(train)) == 150 and len(prompts(test)) == 40 and not prompts(train) & prompts(test)
    validate_rows(train, "rlvr", name)
    sft = load_source(f"builtin:{name}_sft", n=20)
    validate_rows(sft, "sft", name)
    for row in sft:   # the SFT answer is a perfect completion for the RL reward
        verifier = get_verifier(row["verifier"])
        assert verifier(row["messages"][-1]["content"], row["ground_truth"]).score == pytest.approx(1.0)


@pytest.mark.parametrize("prediction, concepts, score", [
    ("The dog catches a frisbee.", ["dog", "frisbee", "catch", "park"], 0.75),        # park missing
    ("Dogs were catching frisbees in the park!", "dog, frisbee, catch, park", 1.0),   # inflections stem-match
    ("", ["dog"], 0.0),
    ("dog dog dog dog", ["dog", "ball"], 0.5),                                        # repetition counts once
    ("The boy ran home.", ["run", "boy"], 0.5),                                       # irregular forms: a stemmer's limit
    ("DOG-BALL", ["dog", "ball"], 1.0),
])
def test_concept_coverage_table(prediction, concepts, score):
    assert get_verifier("concept_coverage")(prediction, concepts).score == pytest.approx(score)


@pytest.mark.parametrize("bad", [[], "  ,  ", 3, ["dog", 4]])
def test_concept_coverage_refuses_unusable_ground_truth(bad):
    with pytest.raises(ValueError, match="concept_coverage ground truth"):
        get_verifier("concept_coverage").check_ground_truth(bad)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_common_gen_rows_from_its_schema(tmp_path):
    fixture = write(tmp_path / "common_gen.jsonl", [   # allenai/common_gen: one row per (concept set, target)
        {"concept_set_idx": 0, "concepts": ["ski", "mountain", "skier"], "target": "Skier skis down the mountain"},
        {"concept_set_idx": 0, "concepts": ["ski", "mountain", "skier"], "target": "A skier is skiing down a mountain."},
        {"concept_set_idx": 1, "concepts": ["dog", "frisbee", "catch"], "target": "The dog catches the frisbee."}])
    rl = mix_sources([{"source": "grue:common_gen_rlvr", "file": fixture}])
    assert len(rl) == 2
    first = next(r for r in rl if "ski" in r["ground_truth"])
    assert first["verifier"] == "concept_coverage" and first["reference"] == [
        "Skier skis down the mountain", "A skier is skiing down a mountain."]
    assert "ski, mountain, skier" in first["messages"][0]["content"]
    validate_rows(rl, "rlvr", "common_gen")
    sft = load_source("grue:common_gen_sft", file=fixture)
    assert len(sft) == 3 and sft[2]["messages"][-1] == {"role": "assistant", "content": "The dog catches the frisbee."}


def test_cnn_dailymail_rows_from_its_schema(tmp_path):
    fixture = write(tmp_path / "cnn.jsonl", [{"article": "LONDON (CNN) -- A cat was elected mayor. It ran unopposed.",
                                              "highlights": "Cat elected mayor.\nRan unopposed.", "id": "abc"}])
    [rl] = load_source("grue:cnn_dailymail_rlvr:test", file=fixture)
    assert rl["messages"][0]["content"].startswith("Summarize: LONDON (CNN)") and rl["verifier"] == "rouge"
    assert get_verifier("rouge")(rl["ground_truth"], rl["ground_truth"]).score == 1.0
    [sft] = load_source("grue:cnn_dailymail_sft", file=fixture)
    assert sft["messages"][-1]["content"] == "Cat elected mayor.\nRan unopposed."


def test_imdb_rows_from_its_schema(tmp_path):
    review = "I loved this film.<br /><br />" + " ".join(f"word{i}" for i in range(60))
    fixture = write(tmp_path / "imdb.jsonl", [{"text": review, "label": 1}, {"text": "Too short.", "label": 0}])
    rl = load_source("grue:imdb_rlvr", file=fixture)
    assert rl[0]["prompt"].startswith("I loved this film. word0") and len(rl[0]["prompt"].split()) == 48
    assert [r["label"] for r in rl] == [1, 0]
    validate_rows(rl, "rl_prompt", "imdb")   # bare prompts: a sentiment classifier rewards them
    sft = load_source("grue:imdb_sft", file=fixture)   # the short review has nothing to continue
    assert len(sft) == 1 and sft[0]["completion"].split() == [f"word{i}" for i in range(44, 60)]


def test_grue_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="unknown GRUE source grue:squad_rlvr; known: grue:common_gen_rlvr"):
        load_source("grue:squad_rlvr")
    fixture = write(tmp_path / "bad.jsonl", [{"concepts": ["a"], "target": "A."}])
    with pytest.raises(DataError, match="common_gen row 1: missing column"):
        load_source("grue:common_gen_rlvr", file=fixture)
