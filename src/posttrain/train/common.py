"""Pieces every trainer shares: run-folder setup, model + tokenizer from the options, and the
tokenised-and-cached conversion of SFT-style rows."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import TrainingOptions, save_config


def prepare_run(options: TrainingOptions, command: str) -> Path:
    """Check every input (``train/preflight.py``), then claim the run folder: create it, lock it
    against a second run, clear it when ``overwrite`` is set, and save the resolved config."""
    from posttrain.train.preflight import preflight
    from posttrain.train.run_folder import is_main_process, lock_run_folder, reset_run_folder

    run_dir = preflight(options)   # before any model loads: bad input fails in seconds
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        lock_run_folder(run_dir)
        if options.overwrite:
            reset_run_folder(run_dir)
    save_config(options, run_dir / "config.yaml")
    (run_dir / "command.txt").write_text(command + "\n")
    # Whatever is initialised at random from here on (a reward model's new head, LoRA's A
    # matrices, a value head) is a function of the seed, not of what ran before in the process.
    from posttrain.train.engine import seed_everything

    seed_everything(options.seed)
    return run_dir


def load_policy(options: TrainingOptions):
    """The trainable model and its tokenizer with the template set: every weight, LoRA (``lora_rank``
    > 0), a soft prompt (``adapter=prompt``) or ATTEMPT (``adapter=attempt``) on the frozen model.
    An encoder-decoder config loads with ``AutoModelForSeq2SeqLM`` (``models/loading.load_model``)."""
    from posttrain.models import apply_lora, load_model, load_tokenizer

    tokenizer = load_tokenizer(options.model, template=options.template)
    model = load_model(options.model, dtype=options.dtype, gradient_checkpointing=options.gradient_checkpointing,
                       attn_implementation=options.attn_implementation)
    model.config.use_cache = False  # packed rows need no KV cache, and a cache disables packed masking
    if options.lora_rank > 0:
        from posttrain.models.seq2seq import is_encoder_decoder

        model = apply_lora(model, rank=options.lora_rank, alpha=options.lora_alpha, dropout=options.lora_dropout,
                           target_modules=options.lora_target_modules[0] if options.lora_target_modules == ["all-linear"]
                           else options.lora_target_modules,
                           task_type="SEQ_2_SEQ_LM" if is_encoder_decoder(model) else "CAUSAL_LM")
    adapter = getattr(options, "adapter", "full")
    if adapter == "prompt":
        from posttrain.models.adapters import apply_prompt_tuning

        model = apply_prompt_tuning(model, options.num_virtual_tokens)
    elif adapter == "attempt":
        from posttrain.models.adapters import apply_attempt

        model = apply_attempt(model, options.source_prompts, options.attempt_hidden, options.attempt_temperature or None)
    return model, tokenizer


def launched_processes() -> int:
    """How many training processes ``accelerate launch`` / ``torchrun`` started (1 when run plainly)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def check_prompts_split(prompts_per_step: int, world: int) -> None:
    """``prompts_per_step`` counts prompts over all processes; each process takes an equal share
    (the samples are seeded per global prompt, so the trajectory does not depend on ``world``)."""
    from posttrain.train.engine import TrainingError

    if prompts_per_step % world:
        raise TrainingError(f"prompts_per_step={prompts_per_step} is the number per step over all {world} "
                            f"processes: make it a multiple of {world}")


def prompt_steps(options, prompts: int) -> int:
    """Optimizer steps of a run that takes ``prompts_per_step`` prompts a step (RL, online DPO,
    distillation): ``max_steps``, else ``num_epochs`` passes over the ``prompts``; refused when
    there are fewer prompts than one step needs."""
    from posttrain.train.engine import TrainingError

    if prompts < options.prompts_per_step:
        raise TrainingError(f"{prompts} prompts for a step of prompts_per_step={options.prompts_per_step}")
    return options.max_steps if options.max_steps > 0 else max(1, int(prompts / options.prompts_per_step
                                                                      * options.num_epochs))


def log(message: str, is_main: bool = True):
    if is_main:
        from rich import print as rprint

        rprint(message)
