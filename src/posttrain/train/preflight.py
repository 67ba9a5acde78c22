"""Check every input of a training run before any model loads.

A run that fails an hour in, or at the step that happens to sample a bad row, costs the user the
hour; a run that silently trains on the wrong thing costs more. So each trainer's
``prepare_run`` calls :func:`preflight` first, and the run starts only when

1. the run folder can be used (not a file, writable, not resumed under a changed config:
   ``train/run_folder.py``);
2. every data source loads and every row has the shape its trainer needs (``data/formats.py``),
   the error naming the source file and the row's own line, whatever the mixture did;
3. for RL: every reward component is well formed (known keys, known verifiers, importable
   functions, parseable LM-judge specs whose local model exists, classifiers that have the
   label asked for), and every row's verifier exists
   and accepts the row's ground truth; for online DPO the same, its judge read as the one
   reward component it amounts to (``OnlineDPOConfig.judge_reward``);
4. an encoder-decoder model is run only with options it supports (``train/seq2seq.py``);
5. a trainer's own checks of its validated rows and its models' files (``check_inputs``:
   ``posttrain distill`` refuses a teacher with another tokenizer before loading weights).

Every failure is a ``ConfigError`` or ``DataError``, which the CLI prints as one line (exit
code 2, no traceback).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import ConfigError, TrainingOptions
from posttrain.data.formats import DataError, validate_located_rows
from posttrain.data.sources import mix_sources
from posttrain.train.seq2seq import check_seq2seq_options
from posttrain.train.run_folder import check_out_folder, check_resume_config, is_main_process

__all__ = ["preflight", "check_rows", "check_reward_components", "check_row_rewards"]


def preflight(options: TrainingOptions) -> Path:
    """Run every check above for ``options``; returns the run folder (not yet created)."""
    run_dir = check_out_folder(options.out)
    check_seq2seq_options(options)   # an encoder-decoder model with options it cannot run
    if is_main_process():
        check_resume_config(options, run_dir)
    if hasattr(options, "reward"):   # online RL: grpo, rloo, ppo, nlpo
        _check_rl(options, options.reward)
    elif hasattr(options, "judge_reward"):   # online DPO: prompts as RL reads them, its judge as a reward
        _check_rl(options, options.judge_reward())
    else:
        kind = getattr(options, "data_kind", None) or ("sft" if _is_sft(options) else "preference")
        # Preference trainers may skip and count bad rows (skip_invalid_rows): then only the
        # sources themselves must load.
        skip = getattr(options, "skip_invalid_rows", False)
        checked = {}
        for field in ("data", "eval_data"):
            sources = getattr(options, field, None)
            if sources:
                rows = mix_sources(sources, seed=options.seed)
                if not skip:
                    checked[field] = check_rows(rows, kind, field)
        # What only one trainer needs of its rows and models (distill: completions when lmbda < 1, a
        # teacher with the student's tokenizer), still before any weights load.
        trainer_checks = getattr(options, "check_inputs", None)
        if trainer_checks is not None:
            trainer_checks(checked)
    return run_dir


def _is_sft(options) -> bool:
    from posttrain.train.sft import SFTConfig

    return isinstance(options, SFTConfig)


def check_rows(rows: list, kind: str, source: str) -> list[tuple[str, dict]]:
    """Validate every row as ``kind``; returns (location, normalised row) pairs."""
    return validate_located_rows(rows, kind, source)


# --------------------------------------------------------------------------- RL


def _check_rl(options, reward: list) -> None:
    check_reward_components(reward)
    if getattr(options, "multi_turn", False):   # tools import and have schemas; the corpus reads
        from posttrain.tools import ToolError, environment_factory
        from posttrain.tools.retrieval import CorpusError

        try:
            environment_factory(options.environment, options.tools, options.retrieval_corpus,
                                options.environment_options)
        except (ToolError, CorpusError) as e:
            raise ConfigError(str(e)) from None
    verifier_entries = [e for e in reward if "verifier" in e]
    fixed = next((e["verifier"] for e in verifier_entries if e["verifier"] != "auto"), None)
    needs_answer = bool(verifier_entries)   # as the trainer decides: else bare prompts will do
    rows = check_rows(mix_sources(options.data, seed=options.seed), "rlvr" if needs_answer else "rl_prompt", "data")
    if needs_answer:
        check_row_rewards(rows, fixed)
    if options.eval_data:   # held-out accuracy always scores with each row's own verifier
        check_row_rewards(check_rows(mix_sources(options.eval_data, seed=options.seed), "rlvr", "eval_data"), None)


def check_reward_components(spec) -> None:
    """Each reward component is well formed, its verifier exists and takes its options, and its
    function imports, all as a ConfigError that names the entry. Reward models are not loaded."""
    from posttrain.rewards.compose import VerifierReward, check_reward_spec, load_callable

    try:
        check_reward_spec(spec)
        for i, entry in enumerate(spec):
            if "verifier" in entry:
                try:
                    VerifierReward(entry["verifier"], correct_value=entry.get("correct_value", 1.0),
                                   verifier_options=entry.get("options"))
                except TypeError as e:   # a misspelled option of the verifier's constructor
                    raise ValueError(f"reward entry {i}: verifier {entry['verifier']!r} does not take options "
                                     f"{entry.get('options')} ({e})") from None
            elif "function" in entry and isinstance(entry["function"], str):
                load_callable(entry["function"])
            elif "reward_model" in entry:
                target = str(entry["reward_model"])
                if target.startswith((".", "/", "~", "runs/")) and not Path(target).expanduser().exists():
                    raise ValueError(f"reward entry {i}: reward model folder {target} does not exist")
            elif "classifier" in entry:   # its config says which labels it has (no weights read)
                from posttrain.rewards.classifier import check_classifier

                try:
                    check_classifier(str(entry["classifier"]), entry["label"], entry.get("options"))
                except ValueError as e:
                    raise ValueError(f"reward entry {i}: {e}") from None
            elif "judge" in entry and str(entry["judge"]).startswith("local:"):
                from posttrain.models import resolve_model_path
                from posttrain.models.loading import ModelError

                try:   # a missing judge model fails now, not after the policy has loaded
                    resolve_model_path(str(entry["judge"])[len("local:"):].strip())
                except ModelError as e:
                    raise ValueError(f"reward entry {i}: judge {entry['judge']!r}: {e}") from None
    except (ValueError, TypeError, KeyError, ImportError, AttributeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"reward: {message}") from None


def check_row_rewards(rows: list[tuple[str, dict]], fixed_verifier: str | None) -> None:
    """Every row names a registered verifier (its own, else the reward's fixed one) whose
    ``check_ground_truth`` accepts the row's ground truth."""
    import difflib

    from posttrain.rewards.base import get_verifier, list_verifiers

    known = list_verifiers()
    verifiers: dict = {}
    for where, row in rows:
        name = row.get("verifier") or fixed_verifier
        if name is None:
            continue   # rows without an answer (bare prompts) are not scored by a verifier
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{where}, field 'verifier': unknown verifier {name!r}{hint}; known: {', '.join(known)}. "
                            f"Fix the row's 'verifier' (or 'dataset') column")
        verifier = verifiers.setdefault(name, get_verifier(name))
        try:
            verifier.check_ground_truth(row.get("ground_truth"))
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}, field 'ground_truth': the {name} verifier cannot use it: {e}") from None
