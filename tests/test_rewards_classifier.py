"""The sequence-classifier reward (RL4LMs' sentiment reward): the softmax probability of one label,
checked against the model's own logits by hand; labels by name or index, unknown ones refused
naming the model's labels before anything trains; the Reward Report describes it as a classifier."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.rewards.classifier import ClassifierReward, check_classifier
from posttrain.rewards.compose import build_reward

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory, tokenizer):
    """A saved tiny random-init ``LlamaForSequenceClassification`` with three named labels, its
    score head scaled up so the three probabilities differ clearly."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-classifier")
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=3, id2label=LABELS,
                      label2id={v: k for k, v in LABELS.items()}, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.mul_(30)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def hand_probability(model_dir: str, text: str, label: int) -> float:
    """exp(z_label) / Σ_j exp(z_j) from the logits transformers itself gives the text alone (no
    padding, so no pooling question): the reference the batched reward must equal."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt")).logits[0].tolist()
    return math.exp(logits[label]) / sum(math.exp(z) for z in logits)


COMPLETIONS = ["What a wonderful film, I loved every minute.", "Dull.", "It was fine, I suppose, nothing more or less."]


def test_reward_is_the_softmax_probability_of_the_label_by_hand(tiny_classifier_dir):
    reward = build_reward([{"classifier": tiny_classifier_dir, "label": "positive", "options": {"batch_size": 2}}])
    totals, parts = reward([[{"role": "user", "content": "Review:"}]] * 3, COMPLETIONS)
    expected = [hand_probability(tiny_classifier_dir, c, 2) for c in COMPLETIONS]
    # batched with padding (batches of 2 and 1) vs one text at a time: float32 noise only
    assert parts["classifier"] == pytest.approx(expected, abs=1e-5)
    assert totals == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.01   # the texts really score differently


def test_prompt_response_input_scores_the_prompt_then_the_completion(tiny_classifier_dir):
    reward = ClassifierReward(tiny_classifier_dir, 0, input="prompt_response")
    prompts = ["The movie was", [{"role": "system", "content": "be kind"}, {"role": "user", "content": "I thought it "}]]
    scores = reward(prompts, ["great fun.", " boring."])
    # a space joins "was" and "great"; "it " already ends in whitespace; the last user turn is the prompt
    assert scores == pytest.approx([hand_probability(tiny_classifier_dir, "The movie was great fun.", 0),
                                    hand_probability(tiny_classifier_dir, "I thought it  boring.", 0)], abs=1e-5)


@pytest.mark.parametrize("label, expected", [("positive", (2, "positive")), ("POSITIVE", (2, "positive")),
                                             (1, (1, "neutral")), ("0", (0, "negative"))])
def test_label_by_name_any_case_or_index(tiny_classifier_dir, label, expected):
    assert check_classifier(tiny_classifier_dir, label) == expected


@pytest.mark.parametrize("label, message", [
    ("postive", "unknown label 'postive' (did you mean 'positive'?); the model's labels: 0=negative, 1=neutral, "
                "2=positive"),
    (3, "label index 3 is out of range; the model's labels: 0=negative, 1=neutral, 2=positive"),
    (True, "label must be a label name or an index"),
])
def test_unknown_label_is_refused_naming_the_models_labels(tiny_classifier_dir, label, message):
    with pytest.raises(ValueError) as err:
        check_classifier(tiny_classifier_dir, label)
    assert message in str(err.value)


def test_a_one_output_model_is_sent_to_the_reward_model_component(tiny_rm_dir):
    with pytest.raises(ValueError, match="softmax of one label is always 1.*reward_model"):
        check_classifier(tiny_rm_dir, 0)


def _rl_rows(tmp_path) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Review {i}:"}) + "\n" for i in range(8)))
    return str(path)


@pytest.mark.parametrize("entry, expected", [
    ("{classifier: CLF, label: postive}", "reward: reward entry 0: classifier CLF: unknown label 'postive' (did you "
                                          "mean 'positive'?); the model's labels: 0=negative, 1=neutral, 2=positive"),
    ("{classifier: CLF}", "reward: reward entry 0: a classifier needs the label"),
    ("{classifier: CLF, label: 1, options: {inputs: response}}", "unknown classifier option 'inputs' (did you mean "
                                                                 "'input'?)"),
    ("{classifier: CLF, label: 1, options: {input: prompt}}", "classifier input='prompt'; choose one of response, "
                                                              "prompt_response"),
    ("{classifier: ./no/such/classifier, label: 1}", "model path './no/such/classifier' does not exist"),
])
def test_bad_classifier_components_fail_before_any_model_loads(tiny_classifier_dir, tmp_path, capsys, entry, expected):
    from posttrain.cli import main as cli_main

    reward = entry.replace("CLF", tiny_classifier_dir)
    rc = cli_main(["grpo", f"data=[{_rl_rows(tmp_path)}]", "eval_data=[]", "model=./no/such/model",
                   f"out={tmp_path / 'run'}", f"reward=[{reward}]"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert expected.replace("CLF", tiny_classifier_dir) in err


def test_a_grpo_run_with_a_classifier_reward_reports_a_classifier(tiny_model_dir, tiny_classifier_dir, tmp_path):
    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.trainer import run_rl
    from test_rl import read_metrics, rl_config

    out = tmp_path / "run"
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, max_steps=1, eval_data=[], data=[_rl_rows(tmp_path)],
                     reward=[{"classifier": tiny_classifier_dir, "label": "positive"}]))
    values = [r["reward/classifier"] for r in read_metrics(out) if "reward/classifier" in r]
    assert len(values) == 1 and 0.0 < values[0] < 1.0
    text = (out / "reward_report.md").read_text()
    assert f"| classifier | classifier | `{tiny_classifier_dir}` | 1.0 | 0 to 1 (label probability) |" in text
    assert "the probability that" in text and "not a correctness check" in text
    assert "verifiable rewards" not in text and "learned reward model" not in text
