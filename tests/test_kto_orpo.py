"""KTO and ORPO trainers: unpaired data (paired rows unpaired, mismatched completions), KTO's KL
reference point as the trainer computes it, 0.5 at step 0, ORPO's step against a per-row forward,
refused options, a few tiny-model steps of each command, and resume. (Loss values: test_losses_
preference.py; two processes: test_trainers_distributed.py; bad rows: test_input_errors.py.)"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.config import ConfigError, load_config
from posttrain.data.formats import DataError, unpair, validate_unpaired_row
from posttrain.data.preference import PairBatches, tokenize_pairs
from posttrain.data.unpaired import UnpairedBatches, split_mismatched, tokenize_unpaired
from posttrain.losses.preference import kto_reference_point, orpo_loss
from posttrain.train.kto import KTOConfig, kto_step, mismatched_kl, run_kto
from posttrain.train.orpo import ORPOConfig, orpo_step, run_orpo
from posttrain.train.preference import completion_logps
from posttrain.train.reference import compute_reference_logps, frozen_copy_reference, reference_from_batch
from test_dpo import ROWS, _home  # noqa: F401  (_home: per-test caches)

UNPAIRED = [
    {"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5.\nThe answer is 5.", "label": True},
    {"prompt": [{"role": "user", "content": "Name a primary colour."}],
     "completion": [{"role": "assistant", "content": "Purple, which is mixed from red and blue."}], "label": False},
    {"prompt": "Capital of France?", "completion": "It is Lyon.", "label": 0},
]


@pytest.fixture
def tiny(tokenizer):
    from conftest import build_tiny_model

    return build_tiny_model(tokenizer).eval()


def examples_of(tokenizer, rows=UNPAIRED + ROWS[:2]):
    return tokenize_unpaired(rows, tokenizer, 256, 128, "test", seed=3)


def perturbed(model, scale=0.02, seed=1):
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def config_of(cls, **kw):
    return load_config(cls, overrides=[f"{k}={v}" for k, v in kw.items()])


# ---------------------------------------------------------------------------------------------
# Unpaired data


def test_paired_rows_unpair_into_one_desirable_and_one_undesirable_example(tokenizer):
    pair = validate_unpaired_row(ROWS[0], "test", 0)
    desirable, undesirable = unpair(pair)
    assert desirable["prompt"] == undesirable["prompt"] == [{"role": "user", "content": ROWS[0]["prompt"]}]
    assert desirable["completion"] == [{"role": "assistant", "content": ROWS[0]["chosen"]}]
    assert desirable["label"] is True
    assert undesirable["completion"] == [{"role": "assistant", "content": ROWS[0]["rejected"]}]
    assert undesirable["label"] is False
    assert validate_unpaired_row(UNPAIRED[2], "test", 2)["label"] is False   # 0 / 1 read as false / true

    examples, stats = examples_of(tokenizer)   # 3 unpaired rows + 2 pairs = 7 examples
    assert stats.kept == 7 and "7 examples of 5 rows" in stats.summary()
    assert [e["desirable"] for e in examples] == [True, False, False, True, False, True, False]
    # the pair's two examples: the same prompt tokens, the chosen / rejected completion tokens
    (pair_example,), _ = tokenize_pairs([ROWS[0]], tokenizer, 256, 128, "test")
    assert examples[3]["prompt_ids"] == examples[4]["prompt_ids"] == pair_example["prompt_ids"]
    assert examples[3]["completion_ids"] == pair_example["chosen_ids"]
    assert examples[4]["completion_ids"] == pair_example["rejected_ids"]
    # every mismatched completion is another example's completion, of another prompt
    for e in examples:
        sources = [o for o in examples if o["completion_ids"] == e["mismatched_ids"]]
        assert sources and all(o["prompt_ids"] != e["prompt_ids"] for o in sources)


def test_unpaired_rows_that_cannot_train_are_refused(tokenizer):
    with pytest.raises(DataError, match=r"test, row 1, field 'label': expected true \(desirable\) or false"):
        tokenize_unpaired([{"prompt": "q", "completion": "a", "label": "yes"}], tokenizer, 256, 128, "test")
    same_prompt = [{"prompt": "q", "completion": c, "label": c == "a"} for c in ("a", "b", "c")]
    with pytest.raises(DataError, match="every example has the same prompt tokens"):
        tokenize_unpaired(same_prompt, tokenizer, 256, 128, "test")


# ---------------------------------------------------------------------------------------------
# KTO: the KL reference point and the first step


def test_kl_reference_point_is_the_mismatched_pair_estimate_of_the_whole_step(tokenizer, tiny):
    """z_ref from the trainer's prepare pass = max(0, mean over the step's examples of
    log π(y'_i|x_i) - log π_ref(y'_i|x_i)), each mismatched row scored on its own here; the same
    whether the step comes as one micro-batch or two; no gradient. Run with policy and reference
    both ways round, so one of the two means is positive and the clamp is exercised too."""
    examples, _ = examples_of(tokenizer)
    batches = UnpairedBatches(examples, tokenizer.pad_token_id)
    other = perturbed(tiny)
    seen = []
    for policy, ref_model in ((tiny, other), (other, tiny)):
        prepare = mismatched_kl(frozen_copy_reference(ref_model, "cpu"), chunked=True)
        whole = prepare(policy, [batches([0, 1, 2, 3, 4, 5])])
        halves = prepare(policy, [batches([0, 1, 2]), batches([3, 4, 5])])
        with torch.no_grad():
            manual = []
            for i in range(6):
                _, mismatched = split_mismatched(batches([i]))
                manual.append([completion_logps(m, mismatched)[0] for m in (policy, ref_model)])
        policy_logps, ref_logps = (torch.cat(column) for column in zip(*manual))
        mean = float((policy_logps - ref_logps).mean())
        for prepared in (whole, halves):
            z = prepared[0]["kl_reference_point"]
            assert not z.requires_grad and all(b["kl_reference_point"] is z for b in prepared)
            # float32 sums of ~20 log-probs of ~-10 each, padded differently: 1e-4 absolute
            assert float(z) == pytest.approx(max(0.0, mean), abs=1e-4)
        seen.append(mean)
    assert max(seen) > 1e-3   # the clamp let a positive estimate through at least once


def test_kto_first_step_is_half_with_precomputed_reference(tokenizer, tiny):
    """π = π_ref: every log-ratio is 0 up to float32 rounding of sums of ~-300 (~1e-5), so z_ref ≈ 0
    and the mean loss ≈ (1 - σ(0)) = 0.5 to within β·1e-5."""
    examples, _ = examples_of(tokenizer)
    batches = UnpairedBatches(examples, tokenizer.pad_token_id)
    batches.extras["ref_logps"] = compute_reference_logps(tiny, batches, batch_size=4, device="cpu")
    prepared = mismatched_kl(reference_from_batch, chunked=True)(tiny, [batches([6, 0, 3, 2])])
    numerator, metrics = kto_step(config_of(KTOConfig))(tiny, prepared[0])
    assert numerator.requires_grad and abs(float(numerator.detach()) / 4 - 0.5) < 1e-5
    assert abs(float(metrics["kl"])) < 1e-4


# ---------------------------------------------------------------------------------------------
# ORPO: the step's log-probs


def test_orpo_step_uses_per_token_means_of_the_responses(tokenizer, tiny):
    """The step's loss = orpo_loss on each response's mean log-prob over its own tokens, each row
    scored alone from full logits; chosen rows are the NLL term's."""
    pairs, _ = tokenize_pairs(ROWS, tokenizer, 256, 128, "test")
    batches = PairBatches(pairs, tokenizer.pad_token_id, share_prompts=True)
    with torch.no_grad():
        numerator, metrics = orpo_step(config_of(ORPOConfig, orpo_lambda=0.5))(tiny, batches([0, 1, 2, 3]))
        means = []
        for key in ("chosen_ids", "rejected_ids"):
            for p in pairs:
                ids = torch.tensor([p["prompt_ids"] + p[key]])
                logps = torch.log_softmax(tiny(ids).logits[0, :-1].float(), -1)
                targets = ids[0, 1:]
                means.append(logps.gather(-1, targets[:, None])[len(p["prompt_ids"]) - 1:].mean())
        chosen, rejected = torch.stack(means).chunk(2)
        expected, nll, _ = orpo_loss(chosen, rejected, 0.5)
    assert float(numerator) == pytest.approx(float(expected.sum()), rel=1e-5)
    assert metrics["nll"] == pytest.approx(float(nll.mean()), rel=1e-5)


def test_refused_combinations():
    with pytest.raises(ConfigError, match="lora_rank"):
        config_of(KTOConfig, reference="lora_base")
    with pytest.raises(ConfigError, match="undesirable_weight=0.0: must be > 0"):
        config_of(KTOConfig, undesirable_weight=0)
    with pytest.raises(ConfigError, match="beta=-1.0"):
        config_of(KTOConfig, beta=-1)
    with pytest.raises(ConfigError, match="orpo_lambda=-0.1: must be >= 0"):
        config_of(ORPOConfig, orpo_lambda=-0.1)
    with pytest.raises(ConfigError, match="unknown option 'beta' for ORPOConfig"):
        config_of(ORPOConfig, beta=0.1)   # TRL's name for λ: ours is orpo_lambda
    from posttrain.train.dpo import DPOConfig

    with pytest.raises(ConfigError, match="run `posttrain kto`"):
        config_of(DPOConfig, loss_type="kto")


# ---------------------------------------------------------------------------------------------
# Tiny-model runs


RUNNERS = {"kto": (KTOConfig, run_kto), "orpo": (ORPOConfig, run_orpo)}


def _train(command, model_dir, out, *extra):
    cls, runner = RUNNERS[command]
    overrides = [f"model={model_dir}", f"out={out}", "batch_size=2", "max_length=128", "max_prompt_length=64",
                 "learning_rate=1e-3", "warmup_ratio=0", "progress=false", "eval_data=[]",
                 "data=[{source: 'builtin:arithmetic_preference', count: 12}]", *extra]
    return runner(load_config(cls, overrides=overrides))


def _losses(run_dir, key="loss"):
    return [r[key] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if key in r]


@pytest.mark.parametrize("command", list(RUNNERS))
def test_command_trains_the_tiny_model(command, tiny_model_dir, tmp_path):
    eval_data = "eval_data=[{source: 'builtin:arithmetic_preference:test', count: 4}]"
    last = _train(command, tiny_model_dir, tmp_path / "run", "max_steps=3", eval_data)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    if command == "kto":   # π = π_ref at the first step: 0.5 (the reference precomputed in other batches)
        assert losses[0] == pytest.approx(0.5, abs=1e-5) and last["reference_cache_hit"] is False
        assert last["start_eval_loss"] == pytest.approx(0.5, abs=1e-5)
    assert math.isfinite(last["eval_loss"]) and "start_eval_accuracy" in last
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    assert (tmp_path / "run" / "report.md").exists()


@pytest.mark.parametrize("command", list(RUNNERS))
def test_resumed_run_continues_the_same_trajectory(command, tiny_model_dir, tmp_path, crash_engine):
    """Stop a run during step 3 (checkpoint at step 2), resume it: the same 4 losses as a run
    that was never stopped. KTO's steps include the prepare pass (z_ref) before each update."""
    _train(command, tiny_model_dir, tmp_path / "full", "max_steps=4")
    with crash_engine("accumulate_gradients", 3):
        _train(command, tiny_model_dir, tmp_path / "resumed", "max_steps=4", "save_steps=2")
    _train(command, tiny_model_dir, tmp_path / "resumed", "max_steps=4", "save_steps=2")
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert len(resumed) == 4 and resumed == pytest.approx(full, rel=1e-6)
    if command == "kto":
        assert _losses(tmp_path / "resumed", "kl") == pytest.approx(_losses(tmp_path / "full", "kl"), rel=1e-6)


def test_kto_trajectory_is_the_same_with_accumulation_and_with_a_reference_copy(tiny_model_dir, tmp_path):
    """Batch 4 with the precomputed reference, batch 2 × accumulation 2, and batch 4 with a frozen
    copy run every step: the same losses and KL reference points (z_ref > 0 at step 2: the estimate
    over the whole step, not per micro-batch, is what is compared)."""
    runs = {"precomputed": ["batch_size=4"], "accumulated": ["batch_size=2", "gradient_accumulation_steps=2"],
            "copy": ["batch_size=4", "reference=copy"]}
    seen = {}
    for name, extra in runs.items():
        _train("kto", tiny_model_dir, tmp_path / name, "max_steps=3", "beta=0.5",
               "data=[{source: 'builtin:arithmetic_preference', count: 16}]", *extra)
        seen[name] = (_losses(tmp_path / name), _losses(tmp_path / name, "kl"))
    assert max(seen["precomputed"][1]) > 0.1
    for name in ("accumulated", "copy"):   # float32 sums of ~-300: 1e-4 absolute (as in the two-process test)
        assert seen[name][0] == pytest.approx(seen["precomputed"][0], rel=1e-4, abs=1e-5)
        assert seen[name][1] == pytest.approx(seen["precomputed"][1], rel=1e-4, abs=1e-4)
