"""Fast tests for posttrain.routing (hashed bag-of-words features)."""

import json

import pytest
import torch

from posttrain.data.builtin_pluralistic import make_routing_dataset
from posttrain.routing import FEATURES, register_feature, route, routed_rows
from posttrain.routing.cli import main

torch.set_num_threads(1)


def test_dataset_determinism_and_lm_blind_spot():
    rows = make_routing_dataset(seed=0)
    assert rows == make_routing_dataset(seed=0)
    def agreement(domains):
        sel = [r for r in rows if r["domain"] in domains]
        return sum(r["human_label"] == r["lm_label"] for r in sel) / len(sel)
    assert agreement({"math", "safety"}) < 0.3 and agreement({"general", "coding", "creative"}) > 0.8


def test_feature_registry_rejects_duplicates():
    with pytest.raises(ValueError):
        register_feature("domain")(lambda row: "x")
    assert {"prompt_length", "domain", "safety_flag", "complexity", "lm_confidence"} <= set(FEATURES)


@pytest.fixture(scope="module")
def result():
    return route(make_routing_dataset(seed=0), budget=200, encoder="hash:128", n_mixtures=32, random_repeats=2, seed=0)


def test_routing_ordering(result):
    acc = result.accuracies
    assert acc["routed"] > acc["random"] + 0.05
    assert acc["routed"] > acc["all_lm"] + 0.05
    assert acc["all_human"] - acc["routed"] < 0.10


def test_routed_output_has_exact_budget(result):
    train = [r for r in make_routing_dataset(seed=0) if r["split"] == "train"]
    out = routed_rows(train, result.human_mask)
    assert len(out) == len(train)
    assert sum(r["label_source"] == "human" for r in out) == 200
    assert {r["label_source"] for r in out} == {"human", "lm"}
    assert all({"prompt", "chosen", "rejected"} <= set(r) for r in out)


def test_main_cli(tmp_path):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert main(["--data", "builtin:routing", "--budget", "50", "--out", str(tmp_path), "--encoder", "hash:64",
                 "--n-mixtures", "8", "--seeds", "0", "--random-repeats", "1"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "routed.jsonl").read_text().splitlines()]
    assert sum(r["label_source"] == "human" for r in rows) == 50
    assert (tmp_path / "report.md").exists() and (tmp_path / "metrics.json").exists()
