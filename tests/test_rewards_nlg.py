"""NLG-metric verifiers (``rouge``, ``bleu``, ``embedding_similarity``): hand-derived values, equality
with the reference packages on arbitrary pairs, refused ground truths, batching through the RL
reward, and Reward Report text that calls them graded similarities (never "accepted")."""

from __future__ import annotations

import json
import math
import random

import pytest

from posttrain.rewards import get_verifier
from posttrain.rewards.compose import VerifierReward, build_reward

# --------------------------------------------------------------------------- rouge: ROUGE-L F1 by hand
# Words are lower-cased [a-z0-9] runs, Porter-stemmed; P = LCS / |prediction|, R = LCS / |reference|,
# F1 = 2PR / (P + R) = 2 LCS / (|prediction| + |reference|).
ROUGE_TABLE = [
    # (prediction, reference, LCS, |prediction|, |reference|)
    ("the cat sat on the mat", "the cat is on the mat", 5, 6, 6),               # the cat _ on the mat
    ("a b c d", "a c e", 2, 4, 3),                                             # a c
    ("Cats RUNNING!", "cat runs", 2, 2, 2),                                    # case, punctuation, stems
    ("A dog is running across a field.", "The dog runs across the field.", 4, 7, 6),   # dog run across field
    ("mat the on sat cat the", "the cat sat on the mat", 3, 6, 6),             # reversed: "the on the" survives
    ("completely unrelated words", "the cat sat", 0, 3, 3),
    ("", "the cat sat", 0, 0, 3),                                              # empty prediction
    ("the the the the", "the cat", 1, 4, 2),                                   # repetition earns one match
]


@pytest.mark.parametrize("prediction, reference, lcs, n_pred, n_ref", ROUGE_TABLE)
def test_rouge_l_equals_the_hand_counted_lcs(prediction, reference, lcs, n_pred, n_ref):
    result = get_verifier("rouge")(prediction, reference)
    expected = 2 * lcs / (n_pred + n_ref) if lcs else 0.0
    assert result.score == pytest.approx(expected, abs=1e-12)
    if lcs:
        assert result.details["precision"] == pytest.approx(lcs / n_pred)
        assert result.details["recall"] == pytest.approx(lcs / n_ref)


def test_rouge_takes_the_best_reference_and_a_wrong_answer_scores_lower():
    refs = ["a completely different sentence", "the cat sat on the mat"]
    result = get_verifier("rouge")("the cat sat on the mat", refs)
    assert result.score == 1.0 and result.details["reference"] == 1
    assert get_verifier("rouge")("a dog barked at the moon", refs).score < 0.5


# --------------------------------------------------------------------------- bleu by hand
# sacreBLEU sentence BLEU = BP · exp(mean_n log p_n), n = 1..4, clipped n-gram precisions p_n;
# BP = exp(1 - r/c) when the hypothesis (c words) is shorter than the reference (r words).

def test_bleu_equals_hand_derived_values():
    bleu = get_verifier("bleu")
    # hyp "the cat sat on the mat", ref "the cat sat on a mat": p1 5/6 (one "the" clipped), p2 3/5
    # (the cat, cat sat, sat on), p3 2/4, p4 1/3; equal lengths, BP 1 -> (5/6·3/5·1/2·1/3)^(1/4) = (1/12)^(1/4)
    assert bleu("the cat sat on the mat", "the cat sat on a mat").score == pytest.approx((1 / 12) ** 0.25, abs=1e-12)
    # every n-gram of "the cat sat on" is in the reference (p_n = 1); c = 4, r = 6 -> BP = exp(1 - 6/4)
    result = bleu("the cat sat on", "the cat sat on the mat")
    assert result.score == pytest.approx(math.exp(-0.5), abs=1e-12) and result.details["bp"] == pytest.approx(math.exp(-0.5))
    assert bleu("the cat sat on the mat", ["a dog", "the cat sat on the mat"]).score == pytest.approx(1.0)
    assert bleu("a dog barked loudly at night", "the cat sat on the mat").score < 0.1   # wrong answer


# --------------------------------------------------------------------------- equal to the reference packages

def _random_pairs(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    words = "the a cat cats dog dogs sat sitting runs running on mat field quickly 42 7 , . ! over under".split()
    sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))   # noqa: E731
    return [(sentence(), [sentence() for _ in range(rng.randint(1, 3))]) for _ in range(n)]


def test_rouge_and_bleu_equal_their_reference_packages_on_arbitrary_pairs():
    from rouge_score import rouge_scorer
    from sacrebleu import sentence_bleu

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for prediction, refs in _random_pairs(60):
        assert get_verifier("rouge")(prediction, refs).score == scorer.score_multi(refs, prediction)["rougeL"].fmeasure
        assert get_verifier("bleu")(prediction, refs).score == pytest.approx(sentence_bleu(prediction, refs).score / 100,
                                                                             abs=1e-12)


# --------------------------------------------------------------------------- bad ground truth

@pytest.mark.parametrize("name", ["rouge", "bleu", "embedding_similarity"])
@pytest.mark.parametrize("truth, message", [
    (None, "must be text, got NoneType"),
    ([], "is an empty list"),
    (["fine", 3], "holds a int (3), not a string"),
    ("   ", "the reference is empty"),
    (["ok", ""], "reference 2 of 2 is empty"),
    ({"answer": "x"}, "must be text, got dict"),
])
def test_bad_ground_truth_is_refused_with_a_clear_message(name, truth, message):
    verifier = get_verifier(name, encoder="hash") if name == "embedding_similarity" else get_verifier(name)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        verifier.check_ground_truth(truth)
    assert str(err.value).startswith(f"{name} ground truth")
    with pytest.raises(ValueError):
        verifier("some prediction", truth)


def test_rouge_refuses_a_reference_it_cannot_tokenize():
    with pytest.raises(ValueError, match="no word ROUGE can compare"):
        get_verifier("rouge").check_ground_truth("猫が座った")
    get_verifier("bleu").check_ground_truth("猫が座った")   # sacreBLEU scores it


def test_rl_rows_with_a_bad_reference_fail_before_the_model_loads(tmp_path, capsys):
    from posttrain.cli import main as cli_main

    rows = [{"prompt": f"Describe item {i}.", "ground_truth": f"Item {i} is red.", "verifier": "rouge"} for i in range(8)]
    rows[5]["ground_truth"] = ["Item 5 is red.", ""]
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = cli_main(["grpo", f"data=[{path}]", "eval_data=[]", "model=./no/such/model", f"out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}, line 6, field 'ground_truth': the rouge verifier cannot use it" in err
    assert "reference 2 of 2 is empty" in err


# --------------------------------------------------------------------------- embedding similarity

def test_embedding_similarity_is_the_mapped_cosine_of_the_encoders_vectors():
    import torch

    from posttrain.models.embeddings import hashed_bow_embeddings

    texts = ["the cat sat on the mat", "the cat sat", "stock prices fell"]
    e = hashed_bow_embeddings(texts, 256)
    cos_1, cos_2 = float(e[1] @ e[0]), float(e[2] @ e[0])
    clip = get_verifier("embedding_similarity", encoder="hash")
    results = clip.score_batch(texts, [texts[0]] * 3)
    assert [r.score for r in results] == pytest.approx([1.0, max(cos_1, 0.0), max(cos_2, 0.0)], abs=1e-6)
    affine = get_verifier("embedding_similarity", encoder="hash", mapping="affine")
    assert affine(texts[2], texts[0]).score == pytest.approx((1 + cos_2) / 2, abs=1e-6)
    # several references: the best cosine counts
    best = clip(texts[1], [texts[2], texts[0]])
    assert best.details["reference"] == 1 and best.details["cosine"] == pytest.approx(cos_1, abs=1e-6)
    assert torch.isclose(torch.tensor(cos_1), e[1] @ e[0])


def test_embedding_similarity_options_are_checked_when_built():
    with pytest.raises(ValueError, match="mapping='square': choose one of clip, affine"):
        get_verifier("embedding_similarity", mapping="square")
    with pytest.raises(ValueError, match="Unknown encoder 'no-such-encoder'"):
        get_verifier("embedding_similarity", encoder="no-such-encoder")


@pytest.mark.slow
def test_minilm_scores_a_paraphrase_above_an_unrelated_sentence():
    verifier = get_verifier("embedding_similarity")   # the embedded all-MiniLM-L6-v2
    reference = "The dog runs across the field."
    same, paraphrase, unrelated = verifier.score_batch(
        [reference, "A dog is running across a field.", "Stock prices fell sharply today."], [reference] * 3)
    assert same.score == pytest.approx(1.0, abs=1e-5)
    assert paraphrase.score > 0.8 > 0.2 > unrelated.score


# --------------------------------------------------------------------------- as an RL reward

def test_reward_batches_each_verifier_and_scores_like_one_call_per_row(monkeypatch):
    from posttrain.rewards.embedding import EmbeddingSimilarityVerifier

    batches = []
    original = EmbeddingSimilarityVerifier.score_batch
    monkeypatch.setattr(EmbeddingSimilarityVerifier, "score_batch",
                        lambda self, p, g: batches.append(list(p)) or original(self, p, g))
    # rows naming no verifier use the component's own (here with options); the others their own
    reward = build_reward([{"verifier": "embedding_similarity", "options": {"encoder": "hash"}}])
    completions = ["the cat sat on the mat", "the cat sat", "a b c d", "stock prices"]
    truths = ["the cat is on the mat", "the cat sat on the mat", "a c e", ["stock prices fell", "x"]]
    names = ["rouge", "", "rouge", ""]
    totals, parts = reward(["p"] * 4, completions, ground_truth=truths, verifier=names)
    assert batches == [["the cat sat", "stock prices"]]   # both embedding rows in one encoder batch
    hashed = get_verifier("embedding_similarity", encoder="hash")
    assert totals[0] == pytest.approx(5 / 6) and totals[2] == pytest.approx(4 / 7)   # ROUGE-L by hand, as above
    assert [totals[1], totals[3]] == pytest.approx([hashed(completions[1], truths[1]).score,
                                                    hashed(completions[3], truths[3]).score], abs=1e-6)


def test_a_grpo_run_on_reference_rows_rewards_and_reports_a_similarity(tiny_model_dir, tmp_path):
    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.trainer import run_rl
    from test_rl import read_metrics, rl_config

    rows = [{"prompt": f"Describe item {i}.", "ground_truth": [f"item {i} is red", "a red item"], "verifier": "rouge"}
            for i in range(8)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, max_steps=1, data=[str(data)], eval_data=[str(data)],
                     eval_size=2, reward=[{"verifier": "auto"}], temperature=2.0))
    (record,) = [r for r in read_metrics(out) if "reward/auto" in r]
    assert 0.0 <= record["reward/auto"] <= 1.0
    text = (out / "reward_report.md").read_text()
    assert "| auto | verifier | `rouge` | 1.0 | 0 to 1 (graded similarity) |" in text
    assert "not a correctness check" in text and "verifiable rewards" not in text and "accepts" not in text


# --------------------------------------------------------------------------- Reward Report text

def test_similarity_verifiers_are_described_as_graded_similarities_not_checks():
    for name in ("rouge", "bleu"):
        d = VerifierReward(name, correct_value=2.0).describe()
        assert d.values == "0 to 2 (graded similarity)" and d.details["similarity"] == [name]
        text = d.intent + " ".join(d.risks)
        assert "not a correctness check" in text and "closeness to the reference" in text
        for claim in ("verifiable rewards", "accepts the completion", "checks that pass", "correctness criterion",
                      "pays only for what it checks"):
            assert claim not in text, claim
    assert "ROUGE-L F1" in VerifierReward("rouge").describe().measures
    assert "max(cosine, 0)" in VerifierReward("embedding_similarity").describe().measures
    # a mix of a check and a similarity names each for what it is
    mixed = VerifierReward("auto")
    mixed(["p", "q"], ["The answer is 3.", "the cat"], ground_truth=["3", "the cat sat"], verifier=["gsm8k", "rouge"])
    d = mixed.describe()
    assert "a check of the completion for `gsm8k`" in d.intent and "graded similarity to the row's reference text for "\
        "`rouge`" in d.intent
    assert len(d.risks) == 2


# --------------------------------------------------------------------------- as an evaluation metric

def test_eval_scores_each_row_with_its_own_verifier(tmp_path):
    from posttrain.evaluation.runner import evaluate

    rows = [{"prompt": "Describe the cat.", "ground_truth": "the cat is on the mat", "verifier": "rouge"},
            {"prompt": "Describe the cat again.", "ground_truth": ["a dog", "the cat sat on a mat"], "verifier": "bleu"},
            {"prompt": "What is 2+3?", "ground_truth": "5", "verifier": "gsm8k"}]
    completions = ["the cat sat on the mat", "the cat sat on the mat", "It is 5."]
    data, preds = tmp_path / "rows.jsonl", tmp_path / "preds.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds.write_text("".join(json.dumps({"task": "verifier_rows", "id": f"verifier_rows-{i}", "completion": c}) + "\n"
                             for i, c in enumerate(completions)))
    result = evaluate(None, "verifier_rows", tmp_path / "eval", predictions=str(preds),
                      data_files={"verifier_rows": str(data)}, log=lambda _: None)
    # ROUGE-L 5/6 (LCS "the cat on the mat"), BLEU (1/12)^(1/4) (hand-derived above), gsm8k 1
    expected = [5 / 6, (1 / 12) ** 0.25, 1.0]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "verifier_rows" / "samples.jsonl").read_text().splitlines()]
    assert [s["results"][0]["score"] for s in sorted(samples, key=lambda s: s["id"])] == pytest.approx(expected)
    (row,) = result["rows"]
    assert row["metric"] == "mean_score" and row["value"] == pytest.approx(sum(expected) / 3) and row["n"] == 3


def test_a_task_scored_by_a_graded_metric_reports_it_by_its_name():
    from posttrain.evaluation.runner import score_metric
    from posttrain.evaluation.tasks import TASKS, Task

    rouge_task = Task("summaries", "dev", "generate", "", lambda ctx: [], scorer="rouge")
    assert score_metric(rouge_task) == "rouge" and score_metric(TASKS["arith_builtin"]) == "accuracy"
    # a share of concepts used is graded too, not an accuracy
    assert score_metric(TASKS["commongen_mini"]) == "concept_coverage"


def test_verifier_rows_without_a_data_file_is_a_clear_error(tmp_path):
    from posttrain.data.formats import DataError
    from posttrain.evaluation.runner import evaluate

    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"task": "verifier_rows", "id": "verifier_rows-0", "completion": "x"}) + "\n")
    with pytest.raises(DataError, match="needs --data-file verifier_rows=FILE"):
        evaluate(None, "verifier_rows", tmp_path / "eval", predictions=str(preds), log=lambda _: None)
