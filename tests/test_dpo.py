"""DPO trainer: shared prompt tokens, reference log-probs (precomputed = on the fly, cached), ln 2 at
step 0, TRL parity, bad input, refused options; a slow run on the embedded model."""

import math
import os

import pytest
import torch

from posttrain.config import ConfigError, load_config
from posttrain.data.formats import DataError
from posttrain.train import reference as reference_module
from posttrain.train.dpo import DPOConfig, dpo_step, run_dpo
from posttrain.train.preference import completion_logps
from posttrain.train.reference import compute_reference_logps, frozen_copy_reference, reference_from_batch
from posttrain.data.preference import PairBatches, encode_pair_row, tokenize_pairs

ROWS = [
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.\nThe answer is 5.", "rejected": "2 + 3 = 6.\nThe answer is 6."},
    {"prompt": [{"role": "user", "content": "Write one word about the sea, in lowercase."}],
     "chosen": [{"role": "assistant", "content": "waves"}],
     "rejected": [{"role": "assistant", "content": "The Sea Is A Large Body Of Salt Water."}]},
    {"chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "It is Lyon, a city in the south-east of the country."}]},
    {"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Purple, which is mixed from red and blue."},
]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Caches (tokenised data, reference log-probs) go to a per-test folder; the embedded model
    stays where it was converted."""
    from posttrain.models import embedded

    real = embedded.posttrain_home()
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    models = tmp_path / "home" / "models"
    models.parent.mkdir(parents=True, exist_ok=True)
    if (real / "models").exists():
        os.symlink(real / "models", models)


@pytest.fixture
def tiny(tokenizer):
    from conftest import build_tiny_model

    return build_tiny_model(tokenizer).eval()


def pairs_of(tokenizer, rows=ROWS, max_length=256):
    examples, _ = tokenize_pairs(rows, tokenizer, max_length, 128, "test")
    return examples


def dpo_config(**kw):
    return load_config(DPOConfig, overrides=[f"{k}={v}" for k, v in kw.items()])


# ---------------------------------------------------------------------------------------------
# Tokenisation: one prompt, shared


@pytest.mark.parametrize("row", ROWS, ids=["strings", "messages", "implicit-prompt+system", "strings-2"])
def test_chosen_and_rejected_share_the_prompt_tokens_once(tokenizer, row):
    from posttrain.data.formats import validate_preference_row
    from posttrain.data.tokenize import encode_prompt

    norm = validate_preference_row(row, "test", 0)
    e = encode_pair_row(tokenizer, norm, 512, None)
    assert e["prompt_ids"] == encode_prompt(tokenizer, norm["prompt"])
    for key in ("chosen", "rejected"):
        full = e["prompt_ids"] + e[f"{key}_ids"]
        # the concatenation is exactly the rendered conversation up to its EOS, tokenised in one go
        text = tokenizer.apply_chat_template(norm["prompt"] + norm[key], tokenize=False)
        text = text[: text.rfind(tokenizer.eos_token) + len(tokenizer.eos_token)]
        assert full == tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(full)
        assert decoded.count("<|im_start|>system") == 1  # no doubled BOS / system prompt
        assert full.count(tokenizer.bos_token_id) == len(norm["prompt"]) + 1 + (norm["prompt"][0]["role"] != "system")
        assert e[f"{key}_ids"][-1] == tokenizer.eos_token_id
    batch = PairBatches([e], tokenizer.pad_token_id)([0])
    n = len(e["prompt_ids"])
    assert torch.equal(batch["input_ids"][0, :n], batch["input_ids"][1, :n])
    assert (batch["labels"][:, :n] == -100).all()


def test_truncation_keeps_the_prompt_end_and_cuts_responses(tokenizer):
    long = {"prompt": "word " * 300, "chosen": "yes " * 300, "rejected": "no"}
    (e,), stats = tokenize_pairs([long], tokenizer, 64, 32, "test")
    assert len(e["prompt_ids"]) == 32 and len(e["prompt_ids"]) + len(e["chosen_ids"]) == 64
    assert stats.truncated == 1


# ---------------------------------------------------------------------------------------------
# Bad input: an error naming the row, or a counted skip


BAD = [
    ({"prompt": "2+2?", "chosen": "4", "rejected": "4"}, "chosen equals rejected"),
    ({"prompt": "2+2?", "chosen": "  ", "rejected": "5"}, "empty response"),
    ({"chosen": "4", "rejected": "5"}, "prompt"),
    ({"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
      "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "5"}]}, "differ"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=["equal", "empty", "no-prompt", "prompt-differs"])
def test_bad_rows_raise_naming_the_row_or_are_counted(tokenizer, bad, message):
    rows = ROWS[:2] + [bad]
    with pytest.raises(DataError, match=rf"test, row 3.*{message}"):
        tokenize_pairs(rows, tokenizer, 256, 128, "test")
    examples, stats = tokenize_pairs(rows, tokenizer, 256, 128, "test", skip_invalid=True)
    assert len(examples) == 2 and stats.skipped_invalid == 1 and "row 3" in stats.summary()


def test_refused_combinations():
    with pytest.raises(ConfigError, match="lora_rank"):
        dpo_config(reference="lora_base")
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_config(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="simpo only"):
        dpo_config(loss_type="dpo", simpo_gamma=1.0)
    with pytest.raises(ConfigError, match="loss_type"):
        dpo_config(loss_type="kto")
    assert dpo_config(loss_type="sigmoid_norm").loss_type == "sigmoid_norm"


# ---------------------------------------------------------------------------------------------
# Reference log-probs and the step


@pytest.mark.parametrize("share", [False, True], ids=["plain", "shared-prompts"])
def test_step_zero_loss_is_ln2_with_precomputed_reference(tokenizer, tiny, share):
    examples = pairs_of(tokenizer)
    batches = PairBatches(examples, tokenizer.pad_token_id, share_prompts=share)
    # One reference batch holding the step's four pairs, as the held-out evaluation batches the
    # reference pass made: then the values agree exactly (other batch compositions change the head
    # matmul's shape, so the float32 rounding, by ~1e-7, and a tie would no longer be a tie).
    batches.extras["ref_logps"] = compute_reference_logps(tiny, batches, batch_size=4, device="cpu")
    for loss_type, beta in (("dpo", 0.1), ("dpo_norm", 5.0), ("sigmoid", 0.1)):
        step = dpo_step(dpo_config(loss_type=loss_type, beta=beta), reference_from_batch)
        numerator, metrics = step(tiny, batches([3, 0, 2, 1]))
        # policy = reference: h = 0 up to float32 rounding of the summed log-probs (~1e-5 of ~300),
        # so |loss - ln 2| <= β·|h|/2 ≤ 5 · 1e-5 / 2 for dpo_norm's per-token means (far less)
        assert abs(float(numerator) / 4 - math.log(2)) < 1e-5
        assert abs(metrics["margin"]) < 1e-5 and metrics["accuracy"] == 0.0


def test_precomputed_reference_equals_on_the_fly_copy(tokenizer, tiny):
    examples = pairs_of(tokenizer)
    batches = PairBatches(examples, tokenizer.pad_token_id)
    pre = compute_reference_logps(tiny, batches, batch_size=1, device="cpu")  # one pair per forward
    copy_ref = frozen_copy_reference(tiny, "cpu")
    batch = batches([2, 0, 3, 1])  # another composition and padding width
    on_the_fly = copy_ref(None, batch).double()
    expected = torch.cat([pre[[2, 0, 3, 1], 0], pre[[2, 0, 3, 1], 1]])
    torch.testing.assert_close(on_the_fly, expected, rtol=0, atol=1e-5)
    batches.extras["ref_logps"] = pre
    torch.testing.assert_close(reference_from_batch(None, batches([2, 0, 3, 1])).double(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("share, chunked", [(True, False), (False, True), (True, True)])
def test_fast_paths_give_the_plain_forwards_logps_and_gradients(tokenizer, tiny, share, chunked):
    """Each pair's prompt run once, both responses continuing from its cache (``share``), and the
    LM head run in chunks on response tokens only (``chunked``): the same summed log-probs, token
    counts and parameter gradients as the concatenated 2B-row forward with full logits."""
    examples = pairs_of(tokenizer)
    out = {}
    for fast in (False, True):
        batch = PairBatches(examples, tokenizer.pad_token_id, share_prompts=share and fast)([2, 0, 3, 1])
        tiny.zero_grad()
        sums, counts = completion_logps(tiny, batch, chunked=chunked and fast)
        (sums * torch.linspace(0.5, 1.5, len(sums))).sum().backward()
        out[fast] = sums.detach(), counts, [p.grad.clone() for p in tiny.parameters()]
    assert (out[False][0] < -1.0).all()   # a random model: about ln(vocab) per token
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-4)
    assert torch.equal(out[True][1].long(), out[False][1].long())
    for a, b in zip(out[True][2], out[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pair_mean_loss_is_invariant_to_accumulation(tokenizer, tiny):
    """Σ numerators / Σ pairs over 2 micro-batches of 2 = the loss of one batch of 4."""
    examples = pairs_of(tokenizer)
    batches = PairBatches(examples, tokenizer.pad_token_id)
    copy_ref = frozen_copy_reference(tiny, "cpu")
    with torch.no_grad():
        tiny.model.embed_tokens.weight.add_(0.01 * torch.randn_like(tiny.model.embed_tokens.weight))
    step = dpo_step(dpo_config(beta=0.5), copy_ref)
    whole, _ = step(tiny, batches([0, 1, 2, 3]))
    halves = step(tiny, batches([0, 1]))[0] + step(tiny, batches([2, 3]))[0]
    assert abs(float(whole) / 4 - math.log(2)) > 1e-4
    torch.testing.assert_close(whole / 4, halves / 4, rtol=0, atol=1e-5)


def test_second_run_reuses_the_cached_reference(tokenizer, tiny_model_dir, tmp_path, monkeypatch):
    common = dict(model=tiny_model_dir, max_steps=1, batch_size=2, progress="false", eval_data="[]",
                  data="[{source: 'builtin:arithmetic_preference', count: 4}]", max_length=128, max_prompt_length=64)
    first = run_dpo(dpo_config(out=tmp_path / "a", **common))
    assert first["reference_cache_hit"] is False and math.isfinite(first["loss"])
    assert abs(first["loss"] - math.log(2)) < 1e-5  # the first step's loss is at the reference

    def no_forward(*a, **k):
        raise AssertionError("the second run ran a reference forward")

    monkeypatch.setattr(reference_module, "compute_reference_logps", no_forward)
    second = run_dpo(dpo_config(out=tmp_path / "b", **common))
    assert second["reference_cache_hit"] is True
    assert second["loss"] == pytest.approx(first["loss"], abs=1e-6)
    assert (tmp_path / "b" / "report.md").exists() and (tmp_path / "b" / "model" / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# TRL parity (only where TRL is installed)


@pytest.mark.parametrize("ours,trls", [("dpo", "sigmoid"), ("dpo_norm", "sigmoid_norm")])
@pytest.mark.parametrize("share", [False, True], ids=["plain", "shared-prompts"])
def test_loss_matches_trl_dpo_trainer(tokenizer, tiny_model_dir, tmp_path, ours, trls, share):
    pytest.importorskip("trl")
    import copy

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from posttrain.data.formats import validate_preference_row

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = __import__("posttrain.data.templates", fromlist=["TULU"]).TULU  # nothing after the EOS
    rows = [validate_preference_row(r, "t", i) for i, r in enumerate(ROWS)]
    beta = 0.1 if ours == "dpo" else 5.0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # a policy different from its reference, so the loss is not ln 2
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    args = TRLConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=beta, loss_type=[trls],
                     use_cpu=True, bf16=False, report_to="none", max_length=256, precompute_ref_log_probs=False)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))

    examples, _ = tokenize_pairs(rows, tok, 256, 128, "test")
    # TRL patched `ref.forward` in place (accelerate's autocast wrapper, a closure over this instance), so
    # a deep copy would still run this instance: our reference is loaded afresh, and TRL runs in fp32.
    ours_ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    step = dpo_step(dpo_config(loss_type=ours, beta=beta), frozen_copy_reference(ours_ref, "cpu"))
    with torch.no_grad():
        numerator, _ = step(model, PairBatches(examples, tok.pad_token_id, share_prompts=share)([0, 1, 2, 3]))
    assert abs(trl_loss - math.log(2)) > 1e-3
    assert float(numerator) / 4 == pytest.approx(trl_loss, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Slow: the embedded model


@pytest.mark.slow
def test_dpo_raises_heldout_preference_accuracy_on_the_embedded_model(tmp_path):
    result = run_dpo(dpo_config(
        out=tmp_path / "dpo", max_steps=24, batch_size=4, learning_rate=5e-6, beta=0.1, warmup_ratio=0,
        max_length=192, max_prompt_length=128, progress="false",
        data="[{source: 'builtin:arithmetic_preference', count: 96, difficulty: [1]}]",
        eval_data="[{source: 'builtin:arithmetic_preference:test', count: 32, difficulty: [1]}]"))
    print({k: round(v, 4) for k, v in result.items() if isinstance(v, float) and "eval" in k})
    assert result["start_eval_accuracy"] == 0.0  # policy = reference: every implicit reward is 0 (a tie)
    assert result["eval_accuracy"] > 0.6 and result["eval_margin"] > 0
    assert result["eval_loss"] < result["start_eval_loss"]
