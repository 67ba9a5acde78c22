"""adapter=prompt (peft prompt tuning) and adapter=attempt (ATTEMPT's attentional mixture):
the mixture against a hand computation, training, saving, reloading, generating, eval, merge's
refusal, and the settings refused before any model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from posttrain.config import ConfigError, load_config

SFT = ["max_length=96", "progress=false", "learning_rate=1e-2", "packing=false", "batch_size=2",
       "data=[{source: 'builtin:arithmetic_sft', count: 8}]"]


def _sft(model_dir, out, *extra):
    from posttrain.cli import main

    assert main(["sft", f"model={model_dir}", f"out={out}", *SFT, *extra]) == 0
    return Path(out)


@pytest.fixture(scope="module")
def source_prompts(tiny_model_dir, tmp_path_factory):
    """Two soft prompts of 4 tokens trained on the tiny model (another seed each)."""
    root = tmp_path_factory.mktemp("sources")
    return [str(_sft(tiny_model_dir, root / name, "adapter=prompt", "num_virtual_tokens=4", "max_steps=2",
                     f"seed={seed}") / "model") for seed, name in enumerate(("add", "mul"))]


# --------------------------------------------------------------------------- ATTEMPT's mixture by hand

def test_attempt_mixture_equals_the_hand_computed_attention():
    from posttrain.models.adapters import AttemptMixture

    sources = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]],      # P_1: max-pool (1, 1, 2)
                            [[-1.0, 3.0, 0.0], [2.0, 0.0, 0.0]]])     # P_2: max-pool (2, 3, 0)
    target = torch.tensor([[0.5, 0.5, 0.5], [0.0, -2.0, 1.0]])        # P_target: max-pool (0.5, 0.5, 1)
    mixture = AttemptMixture(sources, target, hidden=2, temperature=1.5)
    with torch.no_grad():
        mixture.down.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        mixture.up.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    embeds = torch.tensor([[[0.0, 1.0, 0.0], [2.0, -1.0, 0.0], [9.0, 9.0, 9.0]]])   # the last token is padding
    mask = torch.tensor([[1, 1, 0]])

    # x̂ = (2, 1, 0); down → (2, 1); SiLU(z) = z·σ(z); up → (s2, s1, s2 + s1); LayerNorm (γ = 1, β = 0, eps 1e-5)
    silu = [z / (1 + math.exp(-z)) for z in (2.0, 1.0)]
    u = [silu[0], silu[1], silu[0] + silu[1]]
    mean = sum(u) / 3
    var = sum((v - mean) ** 2 for v in u) / 3
    h = [(v - mean) / math.sqrt(var + 1e-5) for v in u]
    keys = [(1, 1, 2), (2, 3, 0), (0.5, 0.5, 1)]
    scores = [sum(k * x for k, x in zip(key, h)) / 1.5 for key in keys]
    a = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
    prompts = [sources[0], sources[1], target]
    expected = target + sum(w * p for w, p in zip(a, prompts))

    prompt, attention = mixture(embeds, mask)
    assert attention[0].tolist() == pytest.approx(a, rel=1e-5)
    assert torch.allclose(prompt[0], expected, atol=1e-5)
    assert mixture.temperature == 1.5 and AttemptMixture(sources, target).temperature == pytest.approx(3 * math.e)


# ------------------------------------------------------------------------------------- soft prompts

def test_soft_prompt_forward_is_peft_forward_without_the_prompt_positions(tiny_model_dir):
    from peft import PeftModelForCausalLM

    from posttrain.models import load_model
    from posttrain.models.adapters import AdapterError, apply_prompt_tuning

    model = apply_prompt_tuning(load_model(tiny_model_dir), num_virtual_tokens=3)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    ours = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    peft_logits = PeftModelForCausalLM.forward(model, input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert ours.shape == (2, 4, model.config.vocab_size)
    assert torch.allclose(ours, peft_logits[:, 3:], atol=1e-5)
    # explicit positions 0..T-1 mean the same as none
    with_positions = model(input_ids=ids, position_ids=torch.arange(4).expand(2, 4)).logits
    assert torch.allclose(with_positions, ours, atol=1e-5)
    with pytest.raises(AdapterError, match="packing=false"):
        model(input_ids=ids, position_ids=torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]]))
    # only the prompt trains
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]


def test_sft_soft_prompt_trains_saves_reloads_and_generates(tiny_model_dir, source_prompts, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from posttrain.models import load_model, load_tokenizer

    folder = Path(source_prompts[0])
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    metrics = [json.loads(line) for line in (folder.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2]

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    tokenizer = load_tokenizer(str(folder))
    enc = tokenizer(["What is 2+3?"], return_tensors="pt")
    out = peft_model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 3)

    ours = load_model(str(folder)).eval()   # posttrain's loader: the same adapter, the row's logits
    with torch.no_grad():
        assert torch.allclose(ours(**enc).logits, peft_model(**enc).logits[:, 4:], atol=1e-5)
    assert torch.equal(ours.generate(**enc, max_new_tokens=3, do_sample=False), out)
    # the LM stayed frozen: the adapter file holds the prompt only
    assert list(load_file(folder / "adapter_model.safetensors")) == ["prompt_embeddings"]


def test_resumed_soft_prompt_run_continues_the_same_trajectory(tiny_model_dir, tmp_path, crash_engine):
    extra = ["adapter=prompt", "num_virtual_tokens=4", "max_steps=4", "learning_rate=1e-1"]
    _sft(tiny_model_dir, tmp_path / "full", *extra)
    with crash_engine("accumulate_gradients", 4):
        _sft(tiny_model_dir, tmp_path / "resumed", *extra, "save_steps=2")
    _sft(tiny_model_dir, tmp_path / "resumed", *extra, "save_steps=2")

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "full"), rel=1e-6)
    assert losses(tmp_path / "full")[-1] != losses(tmp_path / "full")[0]


def test_dpo_with_a_soft_prompt(tiny_model_dir, tmp_path):
    from posttrain.cli import main

    out = tmp_path / "dpo"
    assert main(["dpo", f"model={tiny_model_dir}", f"out={out}", "adapter=prompt", "num_virtual_tokens=4",
                 "reference=lora_base", "share_prompts=false", "max_steps=2", "batch_size=2", "max_length=128",
                 "max_prompt_length=64", "progress=false", "learning_rate=1e-1", "eval_data=[]",
                 "data=[{source: 'builtin:arithmetic_preference', count: 8}]"]) == 0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # the reference is the model without the prompt, so the first loss is not ln 2 but moves
    assert len(losses) == 2 and losses[0] != losses[1]
    assert json.loads((out / "model" / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"


# ------------------------------------------------------------------------------------------- ATTEMPT

def test_sft_attempt_trains_the_mixture_only_saves_one_folder_and_generates(tiny_model_dir, source_prompts, tmp_path):
    from safetensors.torch import load_file

    from posttrain.models import load_model, load_tokenizer
    from posttrain.models.adapters import AttemptLM

    run = _sft(tiny_model_dir, tmp_path / "attempt", "adapter=attempt", "max_steps=2", "attempt_hidden=8",
               f"source_prompts=[{source_prompts[0]},{source_prompts[1]}]")
    folder = run / "model"
    saved = load_file(folder / "attempt_model.safetensors")
    sources = torch.stack([load_file(Path(s) / "adapter_model.safetensors")["prompt_embeddings"] for s in source_prompts])
    assert torch.equal(saved["sources"], sources)                  # frozen
    assert not torch.allclose(saved["target"], sources.mean(0))    # trained from the sources' mean
    config = json.loads((folder / "attempt_config.json").read_text())
    assert config["num_virtual_tokens"] == 4 and config["hidden"] == 8 and len(config["sources"]) == 2

    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in records if "loss" in r][0]
    weights = [step["attention/add"], step["attention/mul"], step["attention/target"]]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert (run / "attention.png").exists() and "attention per prompt" in (run / "report.md").read_text()

    model = load_model(str(folder))
    assert isinstance(model, AttemptLM)
    tokenizer = load_tokenizer(str(folder))
    enc = tokenizer(["What is 2+3?", "Hi"], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, enc["input_ids"].shape[1] + 3) and torch.equal(out[:, :enc["input_ids"].shape[1]],
                                                                            enc["input_ids"])
    with torch.no_grad():   # the reloaded mixture is the trained one
        assert torch.equal(model.mixture.target, saved["target"])


def test_eval_runs_on_prompt_and_attempt_folders(source_prompts, tiny_model_dir, tmp_path):
    from posttrain.cli import main

    attempt = _sft(tiny_model_dir, tmp_path / "attempt", "adapter=attempt", "max_steps=1",
                   f"source_prompts=[{source_prompts[0]},{source_prompts[1]}]") / "model"
    for name, folder in (("prompt", source_prompts[0]), ("attempt", attempt)):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", "--model", str(folder), "--tasks", "arith_builtin,arith_mc_builtin", "--limit", "2",
                     "--max-new-tokens", "3", "--batch-size", "2", "--out", str(out)]) == 0
        rows = json.loads((out / "results.json").read_text())["rows"]
        assert {(r["task"], r["n"]) for r in rows} == {("arith_builtin", 2), ("arith_mc_builtin", 2)}


def test_choice_scores_through_a_soft_prompt_equal_single_row_forwards(source_prompts):
    """A soft-prompted model recomputes its prompt from each row, so multiple-choice scoring takes
    whole right-padded rows there instead of a shared prompt cache; each score still equals the
    continuation's log-probability in a forward of that row alone."""
    import torch

    from posttrain.evaluation.generation import HFGenerator, render_prompts
    from posttrain.models import load_model, load_tokenizer
    from posttrain.models.adapters import reads_soft_prompt

    model, tok = load_model(source_prompts[0]), load_tokenizer(source_prompts[0])
    assert reads_soft_prompt(model) and not reads_soft_prompt(model.get_base_model())
    short, longer = [{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Sam has 12 pens and buys 9 more. How many?"}]
    requests = [(short, "The answer is 7."), (longer, "21"), (short, "7")]
    got = HFGenerator(model, tok, batch_size=2).loglikelihood(requests)
    for (prompt, continuation), value in zip(requests, got):
        p_ids = tok(render_prompts(tok, [prompt])[0], add_special_tokens=False)["input_ids"]
        c_ids = tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logps = model(input_ids=torch.tensor([p_ids + c_ids])).logits.log_softmax(-1)[0]
        assert value == pytest.approx(sum(logps[len(p_ids) + j - 1, t].item() for j, t in enumerate(c_ids)), abs=1e-4)


def test_merge_refuses_a_soft_prompt_saying_why(source_prompts, tiny_model_dir, tmp_path, capsys):
    from posttrain.cli import main

    code = main(["merge", "linear", "--models", source_prompts[0], tiny_model_dir, "--out", str(tmp_path / "m"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "a soft prompt changes no weight" in err and "nothing to fold" in err


# ------------------------------------------------------------------------------------ bad settings

def test_source_prompts_of_another_size_or_model_are_refused_before_any_model_loads(
        source_prompts, tiny_model_dir, tiny_teacher_dir, tmp_path):
    from posttrain.train.sft import SFTConfig

    longer = _sft(tiny_model_dir, tmp_path / "long", "adapter=prompt", "num_virtual_tokens=6", "max_steps=1") / "model"
    base = ["packing=false", "adapter=attempt", f"model={tiny_model_dir}"]
    with pytest.raises(ConfigError, match=r"source prompts differ in length .*: 4, .*: 6"):
        load_config(SFTConfig, overrides=[*base, f"source_prompts=[{source_prompts[0]},{longer}]"])

    other = tmp_path / "other-base"   # the same prompt, said to be trained on another model
    other.mkdir()
    for f in Path(source_prompts[0]).iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": tiny_teacher_dir}))
    with pytest.raises(ConfigError, match=f"{other} was trained on {tiny_teacher_dir}, not on model="):
        load_config(SFTConfig, overrides=[*base, f"source_prompts=[{source_prompts[0]},{other}]"])

    narrow = tmp_path / "narrow"   # a prompt of embeddings 32 wide for a model 64 wide
    narrow.mkdir()
    for f in Path(source_prompts[0]).iterdir():
        (narrow / f.name).write_bytes(f.read_bytes())
    (narrow / "adapter_config.json").write_text(json.dumps({**config, "token_dim": 32}))
    with pytest.raises(ConfigError, match="has embeddings of size 32, the model 64"):
        load_config(SFTConfig, overrides=[*base, f"source_prompts=[{narrow}]"])
    with pytest.raises(ConfigError, match="no adapter_config.json; give the model/ folder of a run trained with"):
        load_config(SFTConfig, overrides=[*base, f"source_prompts=[{tiny_model_dir}]"])


@pytest.mark.parametrize("command, overrides, message", [
    ("sft", ["adapter=prompt"], "add packing=false"),
    ("sft", ["adapter=attempt", "packing=false"], "give source_prompts"),
    ("sft", ["adapter=prompt", "packing=false", "lora_rank=8"], "set lora_rank=0"),
    ("sft", ["adapter=prompt", "packing=false", "num_virtual_tokens=0"], "num_virtual_tokens=0"),
    ("sft", ["source_prompts=[a]"], "source_prompts is for adapter=attempt"),
    ("sft", ["adapter=soft"], "adapter='soft'"),
    ("dpo", ["adapter=prompt", "share_prompts=false"], "not precomputed"),
    ("dpo", ["adapter=prompt", "reference=lora_base"], "share_prompts=false"),
    ("dpo", ["adapter=attempt"], "not available for DPOConfig"),
    ("reward", ["adapter=prompt"], "not available for RewardConfig"),
])
def test_refused_adapter_settings(command, overrides, message):
    from posttrain.cli import TRAINING_COMMANDS  # noqa: F401  (the command table names the classes)
    from posttrain.train.dpo import DPOConfig
    from posttrain.train.reward import RewardConfig
    from posttrain.train.sft import SFTConfig

    cls = {"sft": SFTConfig, "dpo": DPOConfig, "reward": RewardConfig}[command]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(cls, overrides=overrides)


def test_adapter_lora_is_another_spelling_of_lora():
    from posttrain.train.sft import SFTConfig

    assert load_config(SFTConfig, overrides=["adapter=lora"]).lora_rank == 16
    assert load_config(SFTConfig, overrides=["adapter=lora", "lora_rank=4"]).lora_rank == 4
    assert load_config(SFTConfig, overrides=["lora_rank=4"]).adapter == "lora"
    assert load_config(SFTConfig).adapter == "full"
