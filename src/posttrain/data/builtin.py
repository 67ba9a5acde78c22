"""Built-in datasets written by the project, so every command runs with no download.

Arithmetic and word problems with step-by-step answers, generated from a seed. Train and test
never overlap: a problem's split is decided by a hash of its text, not by the seed, so no seed
or size can put the same question in both. Rows follow the column contract of ``formats.py``.

Example (``arithmetic_sft``, difficulty 2)::

    {"messages": [{"role": "user", "content": "Mia has 14 stickers and gets 23 more. How many stickers does she have now?"},
                  {"role": "assistant", "content": "Mia starts with 14 stickers.\\n14 + 23 = 37.\\nThe answer is 37."}],
     "ground_truth": "37", "verifier": "gsm8k", "difficulty": 2}
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Callable

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Ben", "Noa", "Eli", "Ada", "Max"]
THINGS = ["apples", "stickers", "marbles", "books", "pencils", "coins", "cards", "shells", "stamps", "cookies"]
CONTAINERS = ["boxes", "bags", "jars", "baskets", "packs"]
INSTRUCTION = " Think step by step, then end with 'The answer is N.'"


def split_of(text: str, test_share: float = 0.2) -> str:
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_share else "train"


def _problem(rng: random.Random, difficulty: int) -> tuple[str, list[str], int]:
    """One problem: (question, solution steps, answer). Difficulty 1 = single digits, 2 = two
    digits, 3 = two-step word problems with multiplication. Difficulty 1 has three phrasings
    (symbols, words, a one-step story) so its test split is large enough to measure."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if difficulty == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        form = rng.randrange(3)
        if rng.random() < 0.5:
            q = [f"What is {a} + {b}?", f"Compute {a} plus {b}.",
                 f"{name} has {a} {thing} and finds {b} more. How many {thing} does {name} have now?"][form]
            return q, [f"{a} + {b} = {a + b}."], a + b
        a, b = max(a, b), min(a, b)
        q = [f"What is {a} - {b}?", f"Compute {a} minus {b}.",
             f"{name} has {a} {thing} and loses {b}. How many {thing} are left?"][form]
        return q, [f"{a} - {b} = {a - b}."], a - b
    if difficulty == 2:
        a, b = rng.randint(10, 60), rng.randint(10, 40)
        if rng.random() < 0.5:
            q = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
            return q, [f"{name} starts with {a} {thing}.", f"{a} + {b} = {a + b}."], a + b
        a, b = max(a, b), min(a, b)
        q = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
        return q, [f"{name} starts with {a} {thing}.", f"{a} - {b} = {a - b}."], a - b
    boxes, per, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
    box = rng.choice(CONTAINERS)
    q = (f"{name} has {boxes} {box} with {per} {thing} in each, and {extra} loose {thing}. "
         f"How many {thing} does {name} have in total?")
    steps = [f"The {box} hold {boxes} * {per} = {boxes * per} {thing}.",
             f"Adding the loose ones: {boxes * per} + {extra} = {boxes * per + extra}."]
    return q, steps, boxes * per + extra


def _problems(split: str, n: int, seed: int, difficulty: int | list[int]):
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    rng = random.Random(f"{seed}:{split}:{levels}")
    seen: set[str] = set()
    tries = 0
    while len(seen) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct {split} problems at difficulty {levels}: ask for fewer")
        level = rng.choice(levels)
        question, steps, answer = _problem(rng, level)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        yield question, steps, answer, level


def _check_split(split: str):
    if split not in ("train", "test"):
        raise ValueError(f"built-in data has splits 'train' and 'test', not {split!r}")


def arithmetic_sft(split: str = "train", n: int = 2000, seed: int = 0, difficulty=(1, 2, 3)) -> list[dict]:
    """SFT rows: a question and a step-by-step answer ending 'The answer is N.'"""
    _check_split(split)
    rows = []
    for question, steps, answer, level in _problems(split, n, seed, difficulty):
        reply = "\n".join(steps + [f"The answer is {answer}."])
        rows.append({"messages": [{"role": "user", "content": question + INSTRUCTION},
                                  {"role": "assistant", "content": reply}],
                     "ground_truth": str(answer), "verifier": "gsm8k", "difficulty": level})
    return rows


def arithmetic_rlvr(split: str = "train", n: int = 1000, seed: int = 0, difficulty=(1,)) -> list[dict]:
    """RLVR rows: the prompt, the answer as ``ground_truth``, verified by ``gsm8k``. Default
    difficulty 1: the embedded 135M model needs an easy start to get any reward signal."""
    _check_split(split)
    return [{"messages": [{"role": "user", "content": question + INSTRUCTION}],
             "ground_truth": str(answer), "verifier": "gsm8k", "difficulty": level}
            for question, _steps, answer, level in _problems(split, n, seed, difficulty)]


# Difficulty 3's single template and ranges (``_problem``) are the training distribution that
# ``arithmetic_shift`` moves away from: other templates and phrasing, larger numbers, or both.
SHIFT_KINDS = ("phrasing", "numbers", "both")
SHIFT_TEMPLATES = [  # boxes, per and extra appear in this order in every template (tests read them back)
    "A shop has {boxes} {box} and packs {per} {thing} into each. It also keeps {extra} {thing} unpacked. "
    "How many {thing} does the shop have altogether?",
    "There are {boxes} {box} on the table, each holding {per} {thing}. Next to them lie {extra} more {thing}. "
    "What is the total number of {thing}?",
    "{name} fills {boxes} {box} with {per} {thing} each and keeps {extra} {thing} in a pocket. "
    "Count all of {name}'s {thing}.",
    "Each of {name}'s {boxes} {box} contains {per} {thing}, and {extra} {thing} are outside the {box}. "
    "Find how many {thing} {name} has.",
]


def _shifted_problem(rng: random.Random, kind: str) -> tuple[str, int]:
    """A difficulty-3 computation (boxes * per + extra) moved off the training distribution:
    ``phrasing`` — another template, training ranges (boxes 2-9, per 2-12, extra 1-20);
    ``numbers`` — the training template, per 13-25 and extra 21-60 (never in training);
    ``both`` — another template and the larger numbers."""
    name, thing, box = rng.choice(NAMES), rng.choice(THINGS), rng.choice(CONTAINERS)
    boxes = rng.randint(2, 9)
    per, extra = (rng.randint(2, 12), rng.randint(1, 20)) if kind == "phrasing" else (rng.randint(13, 25), rng.randint(21, 60))
    if kind == "numbers":
        template = ("{name} has {boxes} {box} with {per} {thing} in each, and {extra} loose {thing}. "
                    "How many {thing} does {name} have in total?")
    else:
        template = rng.choice(SHIFT_TEMPLATES)
    return template.format(name=name, thing=thing, box=box, boxes=boxes, per=per, extra=extra), boxes * per + extra


def arithmetic_shift(split: str = "test", n: int = 300, seed: int = 0, shift=SHIFT_KINDS) -> list[dict]:
    """RLVR rows of difficulty-3 word problems under a domain shift (``_shifted_problem``), the
    kinds in turn (row i has kind ``shift[i % len(shift)]``, in its ``shift`` column): a model
    trained on ``arithmetic_sft`` difficulty 3 is tested on what it never saw. Verified by ``gsm8k``."""
    _check_split(split)
    kinds = [shift] if isinstance(shift, str) else list(shift)
    if not kinds or set(kinds) - set(SHIFT_KINDS):
        raise ValueError(f"shift must be among {SHIFT_KINDS}, got {shift!r}")
    rng = random.Random(f"shift:{seed}:{split}:{kinds}")
    rows, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(rows) == n:
            return rows
        kind = kinds[len(rows) % len(kinds)]
        question, answer = _shifted_problem(rng, kind)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        rows.append({"messages": [{"role": "user", "content": question + INSTRUCTION}],
                     "ground_truth": str(answer), "verifier": "gsm8k", "shift": kind})
    raise ValueError(f"cannot generate {n} distinct {split} shifted problems: ask for fewer")


def _plausible_wrong(rng: random.Random, answer: int) -> int:
    """A wrong answer that looks like a real slip: off by one, a carry error, or a swapped digit."""
    candidates = {answer + 1, answer - 1, answer + 10, answer - 10, int(str(answer)[::-1]) if answer > 9 else answer + 2}
    candidates.discard(answer)
    candidates = {c for c in candidates if c >= 0}
    return rng.choice(sorted(candidates))


EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
WRONG_OPERATION = {"+": "-", "-": "+", "*": "+"}  # the slips the SFT model makes on story problems
MISTAKES = ("slip", "operation", "dropped_step")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _mistaken_steps(steps: list[str], answer: int, mistake: str, rng: random.Random) -> tuple[list[str], int]:
    """(rejected steps, their wrong answer) for one kind of mistake, each seen in the embedded SFT
    model's own failures (docs/results): ``slip`` — right method, a plausible error in the last
    result; ``operation`` — the wrong operation for the story ("loses 3" read as + 3, a product
    read as a sum), carried through; ``dropped_step`` — a two-step problem answered after its
    first step (the one-line answers RL on single-digit prompts drifts to). A mistake that does
    not apply to a problem (no second step to drop) falls back to ``slip``."""
    if mistake == "dropped_step" and len(steps) == 2 and "*" in steps[0]:
        partial = int(EQUATION.search(steps[0]).group(4))
        if partial != answer:
            return steps[:1], partial
    if mistake == "operation":
        first = next((i for i, step in enumerate(steps) if EQUATION.search(step)), None)
        a, op, b, _ = EQUATION.search(steps[first]).groups()
        a, b, wrong_op = int(a), int(b), WRONG_OPERATION[op]
        if wrong_op == "-":
            a, b = max(a, b), min(a, b)
        value = _apply(a, wrong_op, b)
        bad = steps[:first] + [EQUATION.sub(f"{a} {wrong_op} {b} = {value}", steps[first], count=1)]
        for step in steps[first + 1:]:  # later steps carry the wrong intermediate value on
            _, later_op, y, _ = EQUATION.search(step).groups()
            carried = _apply(value, later_op, int(y))
            bad.append(EQUATION.sub(f"{value} {later_op} {y} = {carried}", step, count=1))
            value = carried
        if value != answer and value >= 0:
            return bad, value
    wrong = _plausible_wrong(rng, answer)
    last = steps[-1].rsplit("=", 1)[0]
    return steps[:-1] + [f"{last}= {wrong}."], wrong


def arithmetic_preference(split: str = "train", n: int = 1000, seed: int = 0, difficulty=(1, 2, 3),
                          mistakes=("slip",)) -> list[dict]:
    """Preference pairs: chosen = the correct worked answer; rejected = the same problem worked
    with one mistake (``mistakes``: ``slip``, ``operation``, ``dropped_step``, drawn in turn;
    see ``_mistaken_steps``). The default, ``slip`` only, makes pairs that differ only in the
    last result."""
    _check_split(split)
    kinds = [mistakes] if isinstance(mistakes, str) else list(mistakes)
    unknown = sorted(set(kinds) - set(MISTAKES))
    if unknown or not kinds:
        raise ValueError(f"mistakes={kinds}: choose from {', '.join(MISTAKES)}")
    rng = random.Random(f"pref:{seed}:{split}")
    rows = []
    for i, (question, steps, answer, level) in enumerate(_problems(split, n, seed, difficulty)):
        mistake = kinds[i % len(kinds)]
        bad_steps, wrong = _mistaken_steps(steps, answer, mistake, rng)
        rows.append({"prompt": [{"role": "user", "content": question + INSTRUCTION}],
                     "chosen": [{"role": "assistant", "content": "\n".join(steps + [f"The answer is {answer}."])}],
                     "rejected": [{"role": "assistant", "content": "\n".join(bad_steps + [f"The answer is {wrong}."])}],
                     "ground_truth": str(answer), "verifier": "gsm8k", "subset": f"arithmetic-{level}"})
    return rows


TOOL_INSTRUCTION = " Use the calculator tool to compute it, then end with 'The answer is N.'"


def _tool_problem(rng: random.Random) -> tuple[str, int]:
    """Arithmetic past what the embedded 135M model computes in its head (it gets 7/32 sums of
    two-digit numbers right, OFFLINE-ASSETS.md): products of 3-digit by 2–3-digit numbers, sums
    of three 4-digit numbers, and a product plus a 4-digit number."""
    form = rng.randrange(4)
    if form == 0:
        a, b = rng.randint(100, 999), rng.randint(11, 99)
        return f"{a} * {b}", a * b
    if form == 1:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return f"{a} * {b}", a * b
    if form == 2:
        a, b, c = (rng.randint(1000, 9999) for _ in range(3))
        return f"{a} + {b} + {c}", a + b + c
    a, b, c = rng.randint(100, 999), rng.randint(11, 99), rng.randint(1000, 9999)
    return f"{a} * {b} + {c}", a * b + c


def arithmetic_tools(split: str = "train", n: int = 500, seed: int = 0) -> list[dict]:
    """RLVR rows for tool use (``posttrain grpo tools=[calculator]``): 3–4 digit products and sums
    (``_tool_problem``), the answer as ``ground_truth``, verified by ``gsm8k`` on the final turn.

    Example::

        {"messages": [{"role": "user", "content": "What is 482 * 37? Use the calculator tool to compute it, then end with 'The answer is N.'"}],
         "ground_truth": "17834", "verifier": "gsm8k"}
    """
    _check_split(split)
    rng = random.Random(f"tools:{seed}:{split}")
    rows, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(rows) == n:
            return rows
        expression, answer = _tool_problem(rng)
        question = f"What is {expression}?"
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        rows.append({"messages": [{"role": "user", "content": question + TOOL_INSTRUCTION}],
                     "ground_truth": str(answer), "verifier": "gsm8k"})
    raise ValueError(f"cannot generate {n} distinct {split} tool problems: ask for fewer")


def arithmetic_tools_sft(split: str = "train", n: int = 500, seed: int = 0) -> list[dict]:
    """Demonstrations of the calculator on ``arithmetic_tools`` problems, to warm a policy up for
    tool RL (a model that never calls the tool gets no signal from it): the tools block in the
    system turn exactly as RL renders it (``tools/format.py``'s fallback), the call, the result as
    a ``tool`` turn, the answer. For templates that render a ``tool`` role (SmolLM2's ChatML);
    SFT trains the two assistant turns only."""
    import json

    from posttrain.tools import ToolChat, resolve_tools

    (calculator,) = resolve_tools(["calculator"])
    system = ToolChat.fallback_system_block([calculator.schema])
    rows = []
    for row in arithmetic_tools(split, n, seed):
        question = row["messages"][0]["content"]
        expression = question.split("?")[0].removeprefix("What is ")
        call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
        rows.append({"messages": [{"role": "system", "content": system}, row["messages"][0],
                                  {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                                  {"role": "tool", "name": "calculator", "content": calculator.function(expression)},
                                  {"role": "assistant", "content": f"The answer is {row['ground_truth']}."}],
                     "ground_truth": row["ground_truth"], "verifier": "gsm8k"})
    return rows


def _ifeval(kind: str) -> Callable:
    def load(split: str = "train", n: int = 500, seed: int = 0, **options):
        from posttrain.data import builtin_ifeval

        _check_split(split)
        if kind == "rlvr":
            return builtin_ifeval.generate_ifeval_prompts(n, seed=seed, split=split)
        if kind == "sft":
            return builtin_ifeval.ifeval_sft_examples(n, seed=seed, split=split)
        return builtin_ifeval.ifeval_preference_pairs(n, seed=seed, split=split)

    load.__doc__ = f"IFEval-style {kind} rows (constraint specs verified by the ifeval verifier)."
    return load


BUILTINS: dict[str, Callable[..., list[dict]]] = {
    "arithmetic_sft": arithmetic_sft,
    "arithmetic_rlvr": arithmetic_rlvr,
    "arithmetic_preference": arithmetic_preference,
    "arithmetic_tools": arithmetic_tools,
    "arithmetic_tools_sft": arithmetic_tools_sft,
    "arithmetic_shift": arithmetic_shift,
    "ifeval_rlvr": _ifeval("rlvr"),
    "ifeval_sft": _ifeval("sft"),
    "ifeval_preference": _ifeval("preference"),
}

# GRUE-style NLG tasks (RL4LMs): commongen_mini, summary_mini (builtin_grue.py imports this module's helpers)
from posttrain.data.builtin_grue import GRUE_BUILTINS  # noqa: E402

BUILTINS.update(GRUE_BUILTINS)
