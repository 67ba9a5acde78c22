"""Bradley–Terry reward model (``posttrain reward``).

Objective (Ouyang et al. 2022, eq. 1; margin from Touvron et al. 2023, eq. 2; centering from
Eisenstein et al. 2023), per pair with scores r_c = r(x, y_w), r_r = r(x, y_l):

    loss = -log σ(r_c - r_r - m) + c·(r_c + r_r)²

averaged over pairs (``losses.preference.bradley_terry_loss``). m is the row's ``margin`` column
when present and ``use_margin`` is on (0 otherwise); c = ``center_rewards_coefficient``.

Model: ``AutoModelForSequenceClassification`` with one label on any backbone. On a causal LM (the
embedded SmolLM2, lr ~1e-5) the score is read at the last real token, the response's EOS (see
``rewards/reward_model.py``: a distinct pad token makes plain transformers read the same place);
on an encoder (``model=minilm``: all-MiniLM-L6-v2, lr ~5e-5) it is the [CLS] pooling, and pairs are
rendered as ``"prompt\\n\\nresponse"`` because an encoder has no chat template. Chosen and rejected
run in one concatenated forward (2B rows).

Data type: preference rows, as ``posttrain dpo`` (``data/preference.py``). Score and
evaluate the saved model with ``posttrain.rewards.reward_model`` (``RewardModelScorer``,
``pairwise_accuracy``, ``reward_model`` for RL).

Departure: no LoRA yet (``lora_rank`` must be 0). ``model_type=vpl`` (per-user latent reward
models) trains with another trainer and its own options: ``posttrain reward model_type=vpl``
(``posttrain.pluralistic.cli``: ``VPLConfig``, ``run_vpl``).

    posttrain reward model=minilm learning_rate=5e-5 max_steps=150
    posttrain reward learning_rate=1e-5 max_steps=100 center_rewards_coefficient=0.01
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import ConfigError, opt
from posttrain.train.preference import PreferenceOptions
from posttrain.losses.preference import bradley_terry_loss


MODEL_TYPES = ("bt", "vpl")


@dataclasses.dataclass
class RewardConfig(PreferenceOptions):
    """``posttrain reward``: a Bradley–Terry reward model on preference pairs."""

    model_type: str = opt("bt", "bt: Bradley–Terry (this trainer); vpl: a pluralistic (per-user latent) reward "
                          "model, another trainer with the options listed under model_type=vpl", "Model")
    model: str = opt("smollm2-135m-instruct", "backbone: hub id, local folder, .gguf, smollm2-135m-instruct, "
                     "or minilm (the all-MiniLM-L6-v2 encoder)", "Model")
    trainable_layers: int = opt(0, "train only the top N transformer blocks (+ final norm and score head); "
                                "0 = every weight. backward stops at the first trainable block",
                                "Model")
    learning_rate: float = opt(1e-5, "peak learning rate (AdamW): ~1e-5 for causal LMs, ~5e-5 for MiniLM",
                               "Optimization")
    use_margin: bool = opt(True, "subtract the row's `margin` column inside the sigmoid when present", "Reward")
    center_rewards_coefficient: float = opt(0.0, "c·(r_c + r_r)² pins the rewards' mean near 0 (try 0.01)",
                                            "Reward")

    def validate(self):
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type={self.model_type!r}: choose bt (Bradley–Terry) or vpl")
        if self.model_type == "vpl":
            raise ConfigError("model_type=vpl has options of its own (posttrain.pluralistic.cli.VPLConfig): "
                              "run `posttrain reward model_type=vpl`, which loads them")
        super().validate()
        if self.lora_rank > 0:
            raise ConfigError("reward models train all weights here: set lora_rank=0")
        if self.center_rewards_coefficient < 0:
            raise ConfigError("center_rewards_coefficient must be >= 0")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length={self.max_prompt_length} must lie in (0, max_length={self.max_length})")
        if self.trainable_layers < 0:
            raise ConfigError("trainable_layers must be >= 0 (0 = train every weight)")


def reward_step(config: RewardConfig):
    """``step(model, batch) -> (Σ per-pair BT losses, metrics)``; the engine divides by the pair count."""
    from posttrain.rewards.reward_model import sequence_scores, shared_prompt_scores

    def step(model, batch):
        if batch.get("share_prompts"):  # each pair's prompt once (decoder backbones only)
            B = batch["num_pairs"]
            scores_2B = shared_prompt_scores(model, batch["prompts"], torch.arange(B).repeat(2), batch["response_ids"],
                                             batch["response_mask"], batch["pad_id"])
        else:
            scores_2B = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        chosen_B, rejected_B = scores_2B.chunk(2)
        margin_B = batch["margin"].to(scores_2B.dtype) if config.use_margin else None
        losses_B, accuracy_B = bradley_terry_loss(chosen_B, rejected_B, margin_B, config.center_rewards_coefficient)
        metrics = {"accuracy": accuracy_B.mean(), "margin": (chosen_B - rejected_B).detach().mean(),   # on the device
                   "rewards/chosen": chosen_B.detach().mean(), "rewards/rejected": rejected_B.detach().mean()}
        return losses_B.sum(), metrics

    return step


def subset_breakdown(model, tokenizer, config: RewardConfig, rows: list[dict], run_dir) -> str:
    """Score the held-out ``rows`` with the trained model and write the per-``subset`` accuracy to
    ``eval_subsets.json``; returns its markdown table. Rows the trainer skipped as invalid
    (``skip_invalid_rows``) are skipped here too."""
    import json

    from posttrain.data.formats import DataError, validate_preference_row
    from posttrain.rewards.reward_model import RewardModelScorer, format_accuracy_table, pairwise_accuracy

    def is_valid(i: int, row: dict) -> bool:
        try:
            validate_preference_row(row, "eval_data", i)
        except DataError:
            return False
        return True

    if config.skip_invalid_rows:
        rows = [r for i, r in enumerate(rows) if is_valid(i, r)]
    was_training = model.training
    scorer = RewardModelScorer(None, model=model, tokenizer=tokenizer, batch_size=config.batch_size,
                               max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    result = pairwise_accuracy(scorer, rows, source="eval_data")
    model.train(was_training)
    (run_dir / "eval_subsets.json").write_text(json.dumps(result, indent=1))
    return format_accuracy_table(result)


def run_reward(config: RewardConfig, command: str = "posttrain reward") -> dict:
    from posttrain.data import mix_sources
    from posttrain.models.loading import enable_activation_checkpointing
    from posttrain.rewards.reward_model import freeze_lower_layers, load_reward_model
    from posttrain.train.common import log, prepare_run
    from posttrain.train.engine import Engine
    from posttrain.models.layout import prompt_sharing
    from posttrain.data.preference import PairBatches, pair_count, pair_lengths, tokenize_pairs
    from posttrain.train.preference import evaluate_step

    # --- run folder, reward model (one-label classifier, distinct pad token), tokenizer
    run_dir = prepare_run(config, command)
    model, tokenizer = load_reward_model(config.model, dtype=config.dtype, template=config.template)
    if config.trainable_layers:
        try:
            freeze_lower_layers(model, config.trainable_layers)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.config.use_cache = False
    engine = Engine(config, model, tokenizer)
    main = engine.is_main

    # --- data: validate, tokenise (cached), one concatenated batch of chosen + rejected rows
    pairs, stats = tokenize_pairs(mix_sources(config.data, seed=config.seed), tokenizer, config.max_length,
                                  config.max_prompt_length, "data", config.skip_invalid_rows, kind="reward")
    log(f"[bold]reward[/] {stats.summary()}", main)
    share = prompt_sharing(config.share_prompts, engine.world) and hasattr(model, "score")  # decoders only
    batches = PairBatches(pairs, tokenizer.pad_token_id, share_prompts=share)
    step = reward_step(config)
    eval_fn = None
    if config.eval_data:
        eval_rows = mix_sources(config.eval_data, seed=config.seed)
        eval_pairs, eval_stats = tokenize_pairs(eval_rows, tokenizer,
                                                config.max_length, config.max_prompt_length, "eval_data",
                                                config.skip_invalid_rows, kind="reward")
        log(f"[bold]reward[/] held out: {eval_stats.summary()}", main)
        eval_batches = PairBatches(eval_pairs, tokenizer.pad_token_id, share_prompts=share)
        eval_fn = lambda m: evaluate_step(m, eval_batches, step, config.batch_size)  # noqa: E731

    # --- train
    last = engine.fit(len(batches), batches, step, normalizer_fn=pair_count, eval_fn=eval_fn, description="reward",
                      lengths=pair_lengths(pairs))
    out = engine.save_final()
    if main:
        from posttrain.reports.training import write_training_report

        report = write_training_report(run_dir, "Reward model", extra={"backbone": config.model,
                                                                        "pairs": stats.summary()})
        if config.eval_data:
            table = subset_breakdown(engine.accelerator.unwrap_model(engine.model), tokenizer, config, eval_rows,
                                     run_dir)
            report.write_text(report.read_text() + "\nHeld-out pairwise accuracy per subset (RewardBench-style):\n\n"
                              + table + "\n")
        log(f"[green]done[/]: reward model in {out}, report in {run_dir / 'report.md'}", main)
    return last
