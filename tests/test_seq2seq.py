"""Encoder-decoder policies (a tiny random T5 with the real SmolLM2 tokenizer): SFT trains the
decoder on the target given the prompt, its loss equal to the mean NLL transformers' own T5
computes; the run's model reloads with AutoModelForSeq2SeqLM and generates; RL log-probs equal a
hand computation from the logits, and the rollout's sampling log-probs agree with them; DPO starts
at ln 2; eval runs a built-in task; unsupported options fail before any model loads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from posttrain.config import load_config


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PC_ROWS = [{"prompt": f"{i} plus 1 is", "completion": f" {i + 1}."} for i in range(3)] + \
    [{"messages": [{"role": "user", "content": f"Double {i}."}, {"role": "assistant", "content": f"It is {2 * i}."}]}
     for i in range(3)]


def test_sft_loss_is_the_target_nll_transformers_computes_and_the_model_reloads_and_generates(tiny_t5_dir, tmp_path,
                                                                                              tokenizer):
    from transformers import AutoModelForSeq2SeqLM

    from posttrain.data.seq2seq import decoder_target_ids, encoder_prompt_ids
    from posttrain.train.sft import SFTConfig, run_sft

    data = write_rows(tmp_path / "pc.jsonl", PC_ROWS)
    out = tmp_path / "run"
    run_sft(load_config(SFTConfig, overrides=[f"model={tiny_t5_dir}", f"out={out}", f"data=[{data}]", "packing=false",
                                              "batch_size=6", "max_steps=3", "learning_rate=1e-2",
                                              "loss_reduction=token_mean", "progress=false"]))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])

    # By hand: transformers' T5 with labels= shifts the target right behind decoder_start itself and
    # returns the mean cross-entropy over the target tokens (teacher forcing); step 1 holds all 6 rows.
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    total, count = 0.0, 0
    for row in PC_ROWS:
        prompt, target = (row["prompt"], row["completion"]) if "prompt" in row else \
            (row["messages"][:1], row["messages"][1]["content"])
        enc = torch.tensor([encoder_prompt_ids(tokenizer, prompt)])
        labels = torch.tensor([decoder_target_ids(tokenizer, target)])
        with torch.no_grad():
            total += float(model(input_ids=enc, labels=labels).loss) * labels.shape[1]
        count += labels.shape[1]
    assert first["step"] == 1 and first["trained_tokens"] == count
    assert first["loss"] == pytest.approx(total / count, rel=1e-5)

    saved = AutoModelForSeq2SeqLM.from_pretrained(out / "model")   # the run's model/ folder, as a user loads it
    before = model.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in saved.state_dict().items())
    generated = saved.generate(input_ids=torch.tensor([encoder_prompt_ids(tokenizer, "1 plus 1 is")]), max_new_tokens=4,
                               do_sample=False)
    assert generated.shape == (1, 5) and generated[0, 0] == saved.config.decoder_start_token_id


@pytest.mark.parametrize("command, options, expected", [
    ("sft", [], "its rows cannot be packed; set packing=false"),
    ("grpo", ["rollout_backend=vllm"], "rollout_backend=vllm is not supported for encoder-decoder policies"),
    ("nlpo", [], "nlpo (an action mask at sampling time) is not supported"),
    ("ppo", ["value_model=./rm"], "value_model=./rm is not supported"),
    ("kto", [], "this command supports causal LMs only"),
])
def test_unsupported_options_are_refused_before_the_model_loads(tiny_t5_dir, tmp_path, capsys, command, options,
                                                                expected):
    from posttrain.cli import main as cli_main

    rc = cli_main([command, f"model={tiny_t5_dir}", f"out={tmp_path / 'run'}", *options])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and expected in err
    assert "encoder-decoder" in err and not (tmp_path / "run" / "config.yaml").exists()


def test_rl_token_logps_equal_a_hand_computation_and_the_rollouts_own(tiny_t5_dir, tokenizer):
    from posttrain.models import load_model
    from posttrain.models.layout import completion_token_logps
    from posttrain.train.rl.rollout import HFRollout

    model = load_model(tiny_t5_dir).eval()
    pad = tokenizer.pad_token_id
    prompts = [tokenizer("Write a sentence: dog, ball.")["input_ids"], tokenizer("Hi")["input_ids"]]
    rollout = HFRollout(model, tokenizer, share_prompts=True).generate(prompts, n=2, max_new_tokens=6,
                                                                       temperature=0.7, seeds=[3, 4])
    completion, mask = rollout.completion_ids, rollout.completion_mask
    with torch.no_grad():
        logps, _ = completion_token_logps(model, rollout.prompt_ids, completion, pad, mask, temperature=0.7)
        shared, _ = completion_token_logps(model, rollout.prompt_ids, completion, pad, mask, temperature=0.7,
                                           share_prompts=True)
        for b, prompt in enumerate(rollout.prompt_ids):   # one row at a time, unpadded
            n = int(mask[b].sum())
            decoder = torch.tensor([[model.config.decoder_start_token_id] + completion[b, :n - 1].tolist()])
            logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=decoder).logits[0] / 0.7
            by_hand = torch.log_softmax(logits, -1).gather(-1, completion[b, :n, None]).squeeze(-1)
            assert torch.allclose(logps[b, :n], by_hand, atol=1e-5)
            assert torch.all(logps[b, n:] == 0)
    assert torch.allclose(shared, logps, atol=1e-5)
    # the sampler drew each token from exactly the distribution the trainer scores
    assert torch.allclose(rollout.sampling_logps, logps, atol=1e-4)
    assert rollout.completion_ids.shape[1] <= 6


def test_dpo_starts_at_ln2_and_trains(tiny_t5_dir, tmp_path):
    from posttrain.train.dpo import DPOConfig, run_dpo

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "chosen": f"{i + 1}.",
             "rejected": f"{i + 2}, I think."} for i in range(4)]
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    run_dpo(load_config(DPOConfig, overrides=[f"model={tiny_t5_dir}", f"out={out}", f"data=[{data}]", "eval_data=[]",
                                              "batch_size=4", "max_steps=2", "learning_rate=1e-2", "progress=false"]))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)   # policy = reference at step 1
    assert records[1]["loss"] < math.log(2) and records[1]["margin"] > 0   # one update moved toward chosen
    from transformers import AutoModelForSeq2SeqLM

    before = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).state_dict()
    after = AutoModelForSeq2SeqLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_eval_runs_a_builtin_task_on_the_seq2seq_model(tiny_t5_dir, tmp_path):
    from posttrain.evaluation.runner import evaluate

    result = evaluate(model=tiny_t5_dir, tasks=["commongen_mini"], limit=3, out_dir=str(tmp_path / "eval"))
    rows = [json.loads(x) for x in (tmp_path / "eval" / "commongen_mini" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["completions"][0], str) for r in rows)
    assert "commongen_mini" in json.dumps(result)


SFT_COMMON = ["data=[{source: 'builtin:commongen_mini_sft', count: 16}]", "packing=false", "eval_data=[]",
              "learning_rate=1e-3", "progress=false"]


def sft_losses(out) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_seq2seq_sft_on_two_processes_follows_one_process(tiny_t5_dir, tmp_path):
    from _launch import accelerate_launch

    from posttrain.cli import main

    common = [f"model={tiny_t5_dir}", "max_steps=2", *SFT_COMMON]
    assert main(["sft", f"out={tmp_path / 'one'}", *common, "batch_size=4"]) == 0
    proc = accelerate_launch("-m", "posttrain.cli", "sft", f"out={tmp_path / 'two'}", *common, "batch_size=2",
                             timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = sft_losses(tmp_path / "one"), sft_losses(tmp_path / "two")
    assert len(one) == 2 and two == pytest.approx(one, rel=1e-4, abs=1e-6)


def test_a_resumed_seq2seq_run_continues_the_same_trajectory(tiny_t5_dir, tmp_path, crash_engine):
    """The checkpoint holds T5's tied embeddings once (shared.weight); resuming must accept that."""
    from posttrain.cli import main

    common = [f"model={tiny_t5_dir}", "max_steps=3", "batch_size=4", *SFT_COMMON]
    assert main(["sft", f"out={tmp_path / 'full'}", *common]) == 0
    with crash_engine("accumulate_gradients", 3):
        main(["sft", f"out={tmp_path / 'resumed'}", *common, "save_steps=2"])
    assert main(["sft", f"out={tmp_path / 'resumed'}", *common, "save_steps=2"]) == 0
    assert sft_losses(tmp_path / "resumed") == pytest.approx(sft_losses(tmp_path / "full"), rel=1e-6)
