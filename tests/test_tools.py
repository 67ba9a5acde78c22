"""Tools and environments (``docs/tools.md``): the calculator's safety, the call parser, tool
schemas, BM25 retrieval, the python sandbox tool, the prefix property of the SmolLM2 (ChatML) and
TÜLU templates, a template's own ``tools=`` support, the bounded environment pool, the built-in
task and its SFT demonstrations. Also the helpers the multi-turn tests share
(``test_multiturn.py``, ``test_openenv.py``, ``test_rl_distributed.py``): test tools and
environments (loaded by ``test_tools:NAME`` like a user's own), a scripted policy (``Scripted``)
whose turns the test chooses, and a tiny random model whose EOS is likely (``eos_model_dir``) for
real sampled episodes of several turns."""

from __future__ import annotations

import json
import time

import pytest
import torch

from posttrain.data.templates import TULU
from posttrain.tools import EnvironmentPool, StepResult, ToolChat, ToolError, environment_factory, parse_tool_calls, \
    resolve_tools
from posttrain.tools.calculator import calculator, evaluate_arithmetic, CalculatorError
from posttrain.train.rl.multiturn import MultiTurnRollout
from posttrain.train.rl.rollout import rollout_from_rows

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 13"}}\n</tool_call>'
ROW = {"messages": [{"role": "user", "content": "What is 12 * 13?"}], "prompt_ids": [1], "ground_truth": "156",
       "verifier": "gsm8k"}


# --- tools and environments used by the tests (loaded by module:name, as a user's own)

def double(x: int) -> int:
    """Double a number.

    Args:
        x: The number.
    """
    return 2 * x


def broken(x: int) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError("the backend is down")


def sleepy(x: int) -> str:
    """Never answers in time.

    Args:
        x: Anything.
    """
    time.sleep(3)
    return "late"


def junk(x: int) -> object:
    """Returns an object that is not a result.

    Args:
        x: Anything.
    """
    return object()


def undocumented(x):
    return x


class NudgeEnvironment:
    """Answers every turn with "Go on." and a reward of 0.25; done after its ``steps``-th step."""

    tools: list = []

    def __init__(self, steps: int = 2):
        self.steps, self.limit = 0, steps

    def reset(self, row):
        return row["messages"]

    def step(self, turn):
        self.steps += 1
        done = self.steps >= self.limit
        return StepResult(observation=None if done else "Go on.", reward=0.25, done=done)


class JunkEnvironment(NudgeEnvironment):
    """Its step returns a number, not a StepResult."""

    def step(self, turn):
        return 42


class RaisingEnvironment(NudgeEnvironment):
    def step(self, turn):
        raise KeyError("no such board")


class FailingResetEnvironment(NudgeEnvironment):
    def reset(self, row):
        return "not a conversation"


class Scripted:
    """A policy that says the given turns in order (the same turn for every row of a call)."""

    def __init__(self, tokenizer, turns):
        self.tokenizer, self.turns, self.calls, self.sampled = tokenizer, turns, 0, []

    def update_weights(self, model):
        pass

    def generate(self, prompt_ids, n, max_new_tokens, seeds=None, **_):
        ids = self.tokenizer(self.turns[self.calls], add_special_tokens=False)["input_ids"]
        ids = (ids + [self.tokenizer.eos_token_id])[:max_new_tokens]
        self.calls += 1
        self.sampled.append(ids)
        return rollout_from_rows(prompt_ids, 1, [ids] * len(prompt_ids), [[-0.5] * len(ids)] * len(prompt_ids),
                                 [ids[-1] == self.tokenizer.eos_token_id] * len(prompt_ids), self.tokenizer,
                                 self.tokenizer.pad_token_id, 0.0)


def episodes(backend, tokenizer, tools=None, environment="", rows=(ROW,), n=1, max_turns=4, max_episode_tokens=400,
             timeout=5.0, seeds=None, max_new_tokens=64, options=None):
    make, resolved = environment_factory(environment, tools, options=options)
    rollout = MultiTurnRollout(backend, tokenizer, make, resolved, EnvironmentPool(4, timeout), max_turns,
                               max_episode_tokens)
    return rollout, rollout.generate([r["prompt_ids"] for r in rows], n, max_new_tokens, rows=list(rows), seeds=seeds)


@pytest.fixture(params=["chatml", "tulu"])
def template_tokenizer(request, tokenizer):
    """The SmolLM2 tokenizer with its own ChatML template, or with TÜLU's (which has no tool role)."""
    import copy

    tok = copy.deepcopy(tokenizer)
    if request.param == "tulu":
        tok.chat_template = TULU
    return tok


def eos_likely(model, tokenizer, scale: float):
    """Point the (tied) EOS embedding along the model's mean final hidden state, ``scale`` /
    its norm long: EOS then gets a logit of about ``scale`` where the hidden state is typical
    (the scale that gives a mix of short and cut turns depends on the model's width)."""
    with torch.no_grad():
        ids = torch.randint(0, len(tokenizer), (8, 24), generator=torch.Generator().manual_seed(0))
        direction = model.model(input_ids=ids).last_hidden_state.flatten(0, 1).mean(0)
        model.model.embed_tokens.weight[tokenizer.eos_token_id] = direction / direction.norm() ** 2 * scale
    return model


@pytest.fixture(scope="module")
def eos_model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama whose EOS embedding points along the mean final hidden state, so EOS is
    sampled often (turns of a few tokens): sampled episodes then take several turns."""
    from conftest import build_tiny_model

    model = eos_likely(build_tiny_model(tokenizer, seed=3), tokenizer, scale=4.5)
    path = tmp_path_factory.mktemp("eos-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# --- the calculator


@pytest.mark.parametrize("expression,expected", [
    ("1234 * 5678", "7006652"), ("(7 + 5) / 4", "3"), ("7 / 2", "3.5"), ("-(3) + 2 ** 10", "1021"),
    ("17 // 5 + 17 % 5", "5"), ("2 ^ 3", "8"), ("3 × 4", "12"), ("0.1 + 0.2", "0.3"),
])
def test_calculator_computes(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression,why", [
    ("__import__('os').system('true')", "Call"),          # no calls
    ("x + 1", "Name"),                                    # no names
    ("(1).real", "Attribute"),                            # no attributes
    ("[1, 2][0]", "Subscript"),                           # no containers, no subscripts
    ("'a' * 3", "Constant"),                              # no strings
    ("True + 1", "Constant"),                             # bools are not numbers here
    ("9 ** 9 ** 9", "exponent 387420489 is above the limit"),   # refused before it is computed
    ("10 ** 30", "exceeds the calculator's limit"),
    ("99999999999 * 99999999999 * 99999999999", "exceeds the calculator's limit"),
    ("1 / 0", "division by zero"), ("0 ** -1", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 +" * 100 + "1", "longer than 200 characters"),
    ("1 +", "cannot parse"),
])
def test_calculator_refuses_with_a_reason(expression, why):
    with pytest.raises(CalculatorError, match=why if " " in why else f"not {why}"):
        evaluate_arithmetic(expression)
    assert calculator(expression).startswith("error: ")   # to the model, a result saying why


# --- parsing calls, schemas, built-ins


def test_tool_calls_are_parsed_and_junk_is_a_failure_not_an_exception():
    ok = parse_tool_calls(f"Let me compute.\n{CALL}")
    assert [(c.name, c.arguments) for c in ok.calls] == [("calculator", {"expression": "12 * 13"})]
    assert not ok.failures
    two = parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call> and '
                           '<tool_call>{"name": "b", "arguments": "{\\"x\\": 1}"}')   # unclosed at the end; string args
    assert [(c.name, c.arguments) for c in two.calls] == [("a", {}), ("b", {"x": 1})]
    assert parse_tool_calls("The answer is 156.").calls == []
    bad = parse_tool_calls('<tool_call>{"name": calc</tool_call><tool_call>[1]</tool_call>'
                           '<tool_call>{"name": "a", "arguments": 3}</tool_call>')
    assert bad.calls == [] and len(bad.failures) == 3
    assert "not JSON" in bad.failures[0] and "string 'name'" in bad.failures[1] and "not an object" in bad.failures[2]


def test_tools_resolve_by_name_and_module_path_with_their_schemas():
    calc, doubled = resolve_tools(["calculator", "test_tools:double"])
    assert calc.schema["function"]["parameters"]["required"] == ["expression"]
    assert doubled.name == "double" and doubled.schema["function"]["parameters"]["properties"]["x"]["type"] == "integer"
    with pytest.raises(ToolError, match="unknown tool 'abacus'"):
        resolve_tools(["abacus"])
    with pytest.raises(ToolError, match="no module named 'nowhere'"):
        resolve_tools(["nowhere:tool"])
    with pytest.raises(ToolError, match="type hints on every argument and a docstring"):
        resolve_tools(["test_tools:undocumented"])
    with pytest.raises(ToolError, match="retrieval_corpus"):
        resolve_tools(["retrieval"])


def test_retrieval_ranks_by_bm25_and_names_bad_corpus_lines(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in [
        "Paris is the capital of France.", "The Nile is a river in Africa.", "Berlin is the capital of Germany."]))
    (search,) = resolve_tools(["retrieval"], retrieval_corpus=str(corpus))
    assert search.function("capital of Germany").startswith("[1] Berlin is the capital of Germany.")
    assert search.function("river").splitlines() == ["[1] The Nile is a river in Africa."]
    assert search.function("volcano") == "no passage matches the query"
    corpus.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: field 'text' is missing"):
        resolve_tools(["retrieval"], retrieval_corpus=str(corpus))


def test_python_tool_runs_in_the_sandbox():
    (python,) = resolve_tools(["python"])
    assert python.function("print(6 * 7)") == "42"
    assert "ZeroDivisionError" in python.function("1 / 0")


# --- templates: the prefix property and the inserted tokens


def test_rendering_after_turn_k_is_a_prefix_of_rendering_after_turn_k_plus_1(template_tokenizer):
    (calc,) = resolve_tools(["calculator"])
    chat = ToolChat(template_tokenizer, [calc.schema])
    assert chat.tool_role == (template_tokenizer.chat_template != TULU)   # TÜLU drops a tool role: user fallback
    conversation = chat.prompt_messages(ROW["messages"])
    rendered = [chat._render(conversation, True)]
    assert '"name": "calculator"' in rendered[0]    # the schema is in the system turn
    for turn, result in [(CALL, "156"), ("Check: " + CALL, "156"), ("The answer is 156.", None)]:
        conversation = conversation + [{"role": "assistant", "content": turn}]
        if result is not None:
            conversation += chat.result_messages([("calculator", result)])
        rendered.append(chat._render(conversation, result is not None))
    for before, after in zip(rendered, rendered[1:]):
        assert after.startswith(before)


NATIVE = (   # a minimal template with its own tools= support, in the manner of Qwen 2.5's
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'tool' %}<|im_start|>user\n<tool_response>{{ m['content'] }}"
    "</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_its_own_tools_support_renders_them(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = NATIVE
    (calc,) = resolve_tools(["calculator"])
    chat = ToolChat(tok, [calc.schema])
    assert chat.native and chat.prompt_messages(ROW["messages"]) == ROW["messages"]   # no fallback block
    prompt = tok.decode(chat.encode_prompt(chat.prompt_messages(ROW["messages"])))
    # (transformers renders with trim_blocks: no newline after a block tag)
    assert prompt.startswith('<|im_start|>system\nTOOLS:{"type": "function"') and "# Tools" not in prompt
    history = ROW["messages"] + [{"role": "assistant", "content": CALL}]
    inserted = tok.decode(chat.continuation_ids(history, chat.result_messages([("calculator", "156")])))
    assert inserted == "\n<|im_start|>user\n<tool_response>156</tool_response><|im_end|>\n<|im_start|>assistant\n"


# --- the environment pool


def test_a_slow_call_holds_one_slot_of_the_pool_not_the_batch():
    """Two slots, four calls; the first waits until the fourth has run. It can only finish if the
    second and third free the other slot while it waits (a pool that ran calls in waves of two
    would keep the fourth back until the first timed out)."""
    import threading

    fourth_ran = threading.Event()
    calls = [lambda: "first" if fourth_ran.wait(30) else "never", lambda: "second", lambda: "third",
             lambda: fourth_ran.set() or "fourth"]
    assert EnvironmentPool(workers=2, timeout=30).run(calls, check=lambda v: v) == ["first", "second", "third",
                                                                                   "fourth"]


# --- the built-in task


def test_arithmetic_tools_rows_are_right_and_splits_disjoint():
    from posttrain.data.builtin import arithmetic_tools
    from posttrain.rewards import get_verifier

    train, test = arithmetic_tools("train", n=200), arithmetic_tools("test", n=50)
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test}
    for row in train[:50]:
        expression = row["messages"][0]["content"].split("?")[0].removeprefix("What is ")
        assert str(evaluate_arithmetic(expression)) == row["ground_truth"] and int(row["ground_truth"]) >= 1000
    verify = get_verifier("gsm8k")
    assert verify(f"The answer is {train[0]['ground_truth']}.", train[0]["ground_truth"]).score == 1.0


# --- SFT demonstrations


def test_tool_sft_demonstrations_teach_what_rl_renders(tokenizer):
    """The demonstrations' prompt is token for token the prompt RL samples from, and SFT trains
    the call and the answer, never the system, user or tool turns."""
    from posttrain.data import encode_conversation
    from posttrain.data.builtin import arithmetic_tools_sft

    row = arithmetic_tools_sft("train", n=3)[0]
    (calc,) = resolve_tools(["calculator"])
    chat = ToolChat(tokenizer, [calc.schema])
    prompt = chat.encode_prompt(chat.prompt_messages(row["messages"][1:2]))
    encoded = encode_conversation(tokenizer, row["messages"])
    assert encoded["input_ids"][:len(prompt)] == prompt
    trained = tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100])
    call, answer = row["messages"][2]["content"], row["messages"][4]["content"]
    assert trained == f"{call}<|im_end|>{answer}<|im_end|>"
    parsed = parse_tool_calls(call).calls[0]
    assert calc.function(**parsed.arguments) == row["messages"][3]["content"] == row["ground_truth"]
