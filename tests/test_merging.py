"""Model merging: the formulas on real tiny checkpoints (exact where float32 makes them exact,
derived tolerances elsewhere), streaming over shards, LoRA adapters against peft's own merge,
clear errors, Spearman on hand-checked rankings, and ``posttrain merge`` end to end."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from posttrain.merging import experiments as merging_experiments
from posttrain.merging import methods as merging
from posttrain.cli import main as cli_main
from posttrain.merging import MergeError

U = 2.0 ** -24  # unit roundoff of float32


# ---------------------------------------------------------------------------------------------
# helpers


def _save(model, tokenizer, folder: Path, **kwargs) -> str:
    model.save_pretrained(folder, **kwargs)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model, from all of its safetensors files."""
    from safetensors.torch import load_file

    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """Three tiny Llamas with different seeds (a, b, c), and b again saved in 1MB shards."""
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("merge-models")
    paths = {name: _save(build_tiny_model(tokenizer, seed), tokenizer, root / name)
             for seed, name in enumerate("abc")}
    paths["b_sharded"] = _save(build_tiny_model(tokenizer, 1), tokenizer, root / "b_sharded", max_shard_size="1MB")
    return paths


SOME = ["model.norm.weight", "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"]


# ---------------------------------------------------------------------------------------------
# the formulas on checkpoints


def test_identical_models_merge_to_themselves(models, tmp_path):
    a = _tensors(models["a"])
    halves = _tensors(merging.merge_linear([models["a"], models["a"]], tmp_path / "halves", progress=False))
    thirds = _tensors(merging.merge_linear([models["a"]] * 3, tmp_path / "thirds", [1, 1, 1], progress=False))
    ta = _tensors(merging.merge_task_arithmetic(models["a"], [models["a"]], tmp_path / "ta", scale=0.7, progress=False))
    assert set(halves) == set(thirds) == set(ta) == set(a)
    for name, x in a.items():
        assert torch.equal(halves[name], x), name  # 0.5x + 0.5x is exact in float32
        assert torch.equal(ta[name], x), name      # x + 0.7 (x − x) = x exactly
        # w = fl(1/3), three rounded products, two rounded sums: |error| <= 5u|x|
        assert torch.all((thirds[name] - x).abs() <= 5 * U * x.abs()), name


def test_interpolation_endpoints_are_exact_and_midpoint_is_the_mean(models, tmp_path):
    a, b = _tensors(models["a"]), _tensors(models["b"])
    at0 = _tensors(merging.merge_interpolate(models["a"], models["b"], 0.0, tmp_path / "0", progress=False))
    at1 = _tensors(merging.merge_interpolate(models["a"], models["b"], 1.0, tmp_path / "1", progress=False))
    mid = _tensors(merging.merge_interpolate(models["a"], models["b"], 0.5, tmp_path / "mid", progress=False))
    for name in a:
        assert torch.equal(at0[name], a[name]) and torch.equal(at1[name], b[name]), name
        assert not torch.equal(mid[name], a[name]) or torch.equal(a[name], b[name]), name
    for name in SOME:  # a/2 and b/2 are exact, so both sides are the one rounding of (a + b)/2
        assert torch.equal(mid[name], (a[name] + b[name]) / 2), name


def test_linear_average_matches_hand_computed_mean_and_normalises_weights(models, tmp_path):
    a, b, c = (_tensors(models[k]) for k in "abc")
    mean = _tensors(merging.merge_linear([models[k] for k in "abc"], tmp_path / "mean", progress=False))
    weighted = merging.merge_linear([models["a"], models["b"]], tmp_path / "w", [2, 6], progress=False)
    same = merging.merge_linear([models["a"], models["b"]], tmp_path / "w2", [0.25, 0.75], progress=False)
    assert json.loads((weighted / "merge.json").read_text())["weights"] == [0.25, 0.75]  # 2/8, 6/8
    w, w2 = _tensors(weighted), _tensors(same)
    for name in SOME:
        exact = (a[name].double() + b[name].double() + c[name].double()) / 3
        bound = 6 * U * torch.stack([a[name], b[name], c[name]]).abs().amax(0).double()  # ~5 roundings of terms <= max
        assert torch.all((mean[name].double() - exact).abs() <= bound), name
        assert torch.equal(w[name], w2[name]), name
        assert torch.allclose(w[name].double(), 0.25 * a[name].double() + 0.75 * b[name].double(),
                              rtol=0, atol=3 * U * float(max(a[name].abs().max(), b[name].abs().max())))


@pytest.mark.parametrize("weights, message", [([1.0], "1 weights for 2 models"), ([1.0, -1.0], ">= 0"),
                                              ([0.0, 0.0], "sum to 0"), ([float("nan"), 1.0], "finite")])
def test_linear_weights_are_validated(models, tmp_path, weights, message):
    with pytest.raises(MergeError, match=message):
        merging.merge_linear([models["a"], models["b"]], tmp_path / "x", weights, progress=False)


def test_task_arithmetic_adds_scaled_task_vectors(models, tmp_path):
    a, b, c = (_tensors(models[k]) for k in "abc")
    out = merging.merge_task_arithmetic(models["a"], [models["b"], models["c"]], tmp_path / "ta", [1.0, 0.5], scale=0.4,
                                        progress=False)
    got = _tensors(out)
    assert json.loads((out / "merge.json").read_text())["lambdas"] == pytest.approx([0.4, 0.2])
    for name in SOME:
        x, y, z = a[name].double(), b[name].double(), c[name].double()
        exact = x + 0.4 * (y - x) + 0.2 * (z - x)
        bound = 8 * U * torch.stack([x, y, z]).abs().amax(0)  # ~6 roundings of terms bounded by 2 max|θ|
        assert torch.all((got[name].double() - exact).abs() <= bound), name


def test_bfloat16_inputs_stay_bfloat16(tokenizer, tmp_path):
    from conftest import build_tiny_model

    a = _save(build_tiny_model(tokenizer, 0).to(torch.bfloat16), tokenizer, tmp_path / "a")
    b = _save(build_tiny_model(tokenizer, 1).to(torch.bfloat16), tokenizer, tmp_path / "b")
    ta, tb = _tensors(a), _tensors(b)
    got = _tensors(merging.merge_linear([a, b], tmp_path / "out", progress=False))
    for name in ta:
        assert got[name].dtype == torch.bfloat16
        # bf16 halves and their sum are exact in float32: one rounding, back to bf16
        assert torch.equal(got[name], ((ta[name].float() + tb[name].float()) / 2).to(torch.bfloat16)), name


def test_sharded_input_and_output_load_with_transformers(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (Path(models["b_sharded"]) / "model.safetensors.index.json").exists()
    out = merging.merge_linear([models["a"], models["b_sharded"]], tmp_path / "out", max_shard_size="4MB",
                               progress=False)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    a, b = _tensors(models["a"]), _tensors(models["b"])
    for name in a:
        assert torch.equal(loaded[name], (a[name] + b[name]) / 2), name
    assert torch.equal(loaded["lm_head.weight"], loaded["model.embed_tokens.weight"])  # still tied
    assert AutoTokenizer.from_pretrained(out).chat_template  # tokenizer and chat template copied


def test_tied_head_stored_by_only_some_inputs_is_dropped(models, tmp_path):
    from safetensors.torch import save_file

    with_head = Path(shutil.copytree(models["b"], tmp_path / "b_head"))
    tensors = _tensors(with_head)
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()},
              str(with_head / "model.safetensors"), metadata={"format": "pt"})
    got = _tensors(merging.merge_linear([models["a"], with_head], tmp_path / "out", progress=False))
    assert "lm_head.weight" not in got and set(got) == set(_tensors(models["a"]))


# ---------------------------------------------------------------------------------------------
# clear errors


def test_mismatched_shapes_name_the_folder_and_tensor(models, tokenizer, tmp_path, capsys):
    from conftest import build_tiny_model
    from transformers import LlamaForCausalLM

    config = build_tiny_model(tokenizer).config
    config.intermediate_size = 96
    other = _save(LlamaForCausalLM(config), tokenizer, tmp_path / "wide")
    with pytest.raises(MergeError) as err:
        merging.merge_linear([models["a"], other], tmp_path / "out", progress=False)
    message = str(err.value)
    assert other in message and "'model.layers.0.mlp.down_proj.weight'" in message and "(64, 96)" in message

    config = build_tiny_model(tokenizer).config
    config.num_hidden_layers = 1
    shallow = _save(LlamaForCausalLM(config), tokenizer, tmp_path / "shallow")
    with pytest.raises(MergeError, match=r"shallow: tensor 'model\.layers\.1\..*' is missing"):
        merging.merge_linear([models["a"], shallow], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # validated before anything is written

    # through the command line: one line, exit 1
    capsys.readouterr()
    code = cli_main(["merge", "linear", "--models", models["a"], other, "--out", str(tmp_path / "out"),
                     "--no-progress"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err_lines) == 1 and err_lines[0].startswith("posttrain merge: error:")
    assert "down_proj" in err_lines[0]


def test_existing_output_needs_overwrite(models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["merge", "linear", "--models", models["a"], models["b"], "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert cli_main(argv + ["--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    with pytest.raises(MergeError, match="is an input model"):
        merging.merge_linear([models["a"]], models["a"], overwrite=True, progress=False)


# ---------------------------------------------------------------------------------------------
# LoRA adapters


def _adapter(base_dir: str, folder: Path, seed: int, **lora) -> tuple[str, dict[str, torch.Tensor]]:
    """A LoRA adapter of ``base_dir`` with random (non-zero) A and B, saved; and peft's merge_and_unload."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # B starts at 0: perturb both factors
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(folder)
    return str(folder), {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


def test_lora_adapters_merge_like_peft(models, tmp_path):
    logging.getLogger("peft").setLevel(logging.ERROR)  # peft warns about LoRA on tied embeddings
    one, peft_one = _adapter(models["a"], tmp_path / "lora1", 1, lora_alpha=8,
                             target_modules=["q_proj", "down_proj", "embed_tokens"], alpha_pattern={"down_proj": 3})
    two, peft_two = _adapter(models["a"], tmp_path / "lora2", 2, lora_alpha=16, target_modules="all-linear",
                             use_rslora=True)
    got = _tensors(merging.merge_linear([one], tmp_path / "one", progress=False))
    avg = _tensors(merging.merge_linear([one, two], tmp_path / "avg", progress=False))
    base = _tensors(models["a"])
    assert set(got) == set(base)
    changed = 0
    for name in got:
        # the same float32 operations as peft, in the same order; slack for matmul blocking only
        assert torch.allclose(got[name], peft_one[name], rtol=0, atol=1e-6), name
        assert torch.allclose(avg[name], (peft_one[name] + peft_two[name]) / 2, rtol=0, atol=1e-6), name
        changed += not torch.equal(got[name], base[name])
    assert changed == 2 * 2 + 1  # q_proj and down_proj in 2 layers, and the embedding


def test_lora_adapter_without_a_recorded_base_needs_lora_base(models, tmp_path):
    folder, peft_merged = _adapter(models["a"], tmp_path / "lora", 3, lora_alpha=8, target_modules=["v_proj"])
    config_path = Path(folder) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    with pytest.raises(MergeError, match="--lora-base"):
        merging.merge_linear([folder], tmp_path / "out", progress=False)
    # an adapter against its own base: task arithmetic with scale 1 is the adapter's full model
    out = merging.merge_task_arithmetic(models["a"], [folder], tmp_path / "out", lora_base=models["a"], progress=False)
    got = _tensors(out)
    for name in got:
        assert torch.allclose(got[name], peft_merged[name], rtol=0, atol=1e-6), name


# ---------------------------------------------------------------------------------------------
# Spearman and the mixture simulation


@pytest.mark.parametrize("x, y, rho", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),            # identical rankings
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),               # reversed
    ([1, 2, 3, 4], [1, 3, 2, 4], 0.8),                # one swap: 1 − 6·2/(4·15)
    ([0.5, 2.0, 9.0], [3.0, 1.0, 2.0], -0.5),         # d = (2, −1, −1): 1 − 6·6/(3·8)
    ([1, 2, 2, 3], [1, 2, 3, 4], math.sqrt(0.9)),      # tie → ranks (1, 2.5, 2.5, 4): 4.5/√(4.5·5)
])
def test_spearman_hand_checked(x, y, rho):
    assert merging.spearman(x, y) == pytest.approx(rho, abs=1e-12)


def test_spearman_rejects_short_or_unequal_input():
    with pytest.raises(ValueError):
        merging.spearman([1.0], [1.0])
    with pytest.raises(ValueError):
        merging.spearman([1.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(merging.spearman([1, 1, 1], [1, 2, 3]))


def test_mixture_simulation_averages_partition_models_and_ranks(models, tmp_path, monkeypatch):
    """Partition models differ only in model.norm.weight (all c_p); a stand-in perplexity reads the
    merged model's mean norm weight, so each candidate's score is Σ_p w_p c_p by hand."""
    from safetensors.torch import save_file

    constants = {"p1": 1.0, "p2": 2.0, "p3": 4.0}
    partition_models = {}
    for name, c in constants.items():
        folder = Path(shutil.copytree(models["a"], tmp_path / name))
        tensors = _tensors(folder)
        tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], c)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        partition_models[name] = folder

    def fake_perplexity(model, eval_data, **kwargs):
        value = float(_tensors(model)["model.norm.weight"].mean())
        return {"perplexity": value, "nll": math.log(value), "conversations": 1}

    monkeypatch.setattr(merging_experiments, "perplexity", fake_perplexity)
    mixtures = {"only_p1": {"p1": 1}, "p1_p3": {"p1": 1, "p3": 1}, "mostly_p3": {"p2": 1, "p3": 3},
                "p2_alone": {"p1": 0, "p2": 5}}
    expected = {"only_p1": 1.0, "p2_alone": 2.0, "p1_p3": 2.5, "mostly_p3": 3.5}  # (2·1 + 4·3)/4 = 3.5
    ranking = merging_experiments.simulate_mixtures(partition_models, mixtures, ["unused"], tmp_path / "sim", progress=False,
                                        true_scores={"only_p1": 10, "p2_alone": 11, "p1_p3": 12, "mostly_p3": 13})
    assert [r["mixture"] for r in ranking] == ["only_p1", "p2_alone", "p1_p3", "mostly_p3"]
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4]
    for r in ranking:
        assert r["perplexity"] == pytest.approx(expected[r["mixture"]], rel=1e-6)
    assert ranking[-1]["weights"] == {"p2": 0.25, "p3": 0.75}
    assert merging_experiments.rank_correlation(ranking, {"only_p1": 1, "p2_alone": 2, "p1_p3": 3, "mostly_p3": 4}) == 1.0
    assert merging_experiments.rank_correlation(ranking, {"only_p1": 4, "p2_alone": 3, "p1_p3": 2, "mostly_p3": 1}) == -1.0
    assert "Spearman's ρ against the true scores: 1.000" in (tmp_path / "sim" / "report.md").read_text()
    assert not list((tmp_path / "sim" / "mixtures").glob("*/model"))  # merged models deleted after scoring
    with pytest.raises(MergeError, match="unknown partition"):
        merging_experiments.simulate_mixtures(partition_models, {"x": {"p9": 1}}, ["unused"], tmp_path / "bad", progress=False)
    with pytest.raises(MergeError, match="no true score"):
        merging_experiments.rank_correlation(ranking, {"only_p1": 1})


# ---------------------------------------------------------------------------------------------
# the command line end to end

EVAL = "{source: 'builtin:arithmetic_sft:test', count: 8}"
EVAL_ENTRY = {"source": "builtin:arithmetic_sft:test", "count": 8}
SFT = ["--steps", "1", "--sft", "batch_size=2", "--sft", "max_length=96", "--sft", "progress=false",
       "--sft", "warmup_ratio=0", "--sft", "learning_rate=1e-3"]


def test_cli_task_arithmetic(models, tmp_path):
    out = tmp_path / "ta"
    assert cli_main(["merge", "task-arithmetic", "--base", models["a"], "--models", models["b"], models["c"],
                     "--weights", "1", "-1", "--scale", "0.5", "--out", str(out), "--no-progress"]) == 0
    a, b, c, got = _tensors(models["a"]), _tensors(models["b"]), _tensors(models["c"]), _tensors(out)
    name = "model.layers.1.mlp.up_proj.weight"
    exact = a[name].double() + 0.5 * (b[name].double() - a[name].double()) - 0.5 * (c[name].double() - a[name].double())
    bound = 8 * U * torch.stack([a[name], b[name], c[name]]).abs().amax(0).double()
    assert torch.all((got[name].double() - exact).abs() <= bound)


def test_cli_interpolation_sweep_reports_each_alpha(models, tmp_path):
    out = tmp_path / "sweep"
    assert cli_main(["merge", "interpolate", "--pre", models["a"], "--post", models["b_sharded"], "--alphas", "0,0.5,1",
                     "--eval-tasks", "arith_easy_builtin", "--limit", "2", "--max-new-tokens", "4",
                     "--eval-data", EVAL, "--max-length", "96", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert all("arith_easy_builtin accuracy" in r and r["perplexity"] > 1 for r in rows)
    # the endpoints are the input models, so their perplexities are the inputs' own
    for row, model in ((rows[0], models["a"]), (rows[2], models["b"])):
        own = merging_experiments.perplexity(model, [EVAL_ENTRY], max_length=96)["perplexity"]
        assert row["perplexity"] == pytest.approx(own, rel=1e-9)
    report = (out / "report.md").read_text()
    assert "| alpha | arith_easy_builtin accuracy | perplexity |" in report and report.count("\n| 0.5 |") == 1
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "alpha-0.5" / "model").exists() and (out / "alpha-0.5" / "eval" / "results.json").exists()


def test_cli_add_skill_trains_then_merges(models, tmp_path):
    out = tmp_path / "skill"
    assert cli_main(["merge", "add-skill", "--general", models["a"], "--skill-data",
                     "{source: 'builtin:ifeval_sft', count: 4}", "--weight", "0.5", "--out", str(out),
                     "--no-progress", *SFT]) == 0
    general, skill, merged = _tensors(models["a"]), _tensors(out / "skill" / "model"), _tensors(out / "model")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(skill[name], general[name])  # the skill run trained
    exact = general[name].double() + 0.5 * (skill[name].double() - general[name].double())
    assert torch.all((merged[name].double() - exact).abs()
                     <= 4 * U * torch.maximum(general[name].abs(), skill[name].abs()).double())


def test_cli_mixtures_trains_partitions_and_prints_spearman(models, tmp_path, capsys):
    out = tmp_path / "mix"
    argv = ["merge", "mixtures", "--base", models["a"],
            "--partition", "arith={source: 'builtin:arithmetic_sft', count: 4}",
            "--partition", "ifeval={source: 'builtin:ifeval_sft', count: 4}",
            "--mixture", "a=arith", "--mixture", "ai=arith:0.5,ifeval:0.5", "--mixture", "i=ifeval",
            "--eval-data", EVAL, "--max-length", "96", "--true-score", "a=1", "--true-score", "ai=2",
            "--true-score", "i=3", "--out", str(out), "--no-progress", *SFT]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    ranking = json.loads((out / "mixtures.json").read_text())["ranking"]
    assert sorted(r["mixture"] for r in ranking) == ["a", "ai", "i"]
    assert [r["perplexity"] for r in ranking] == sorted(r["perplexity"] for r in ranking)
    rho = merging_experiments.rank_correlation(ranking, {"a": 1, "ai": 2, "i": 3})
    assert f"Spearman's rho against the true scores: {rho:.3f}" in printed
    assert (out / "partitions" / "arith" / "model" / "config.json").exists()
    # bad input is one clear line
    assert cli_main(argv[:6] + ["--mixture", "x=arith:lots", "--eval-data", EVAL, "--out", str(out)]) == 2
    assert "is not a number" in capsys.readouterr().err
