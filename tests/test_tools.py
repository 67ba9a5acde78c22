"""Tools, environments and multi-turn rollouts (``docs/tools.md``): the calculator's safety, the
call parser, tool schemas, BM25 retrieval, the prefix property of the SmolLM2 (ChatML) and TÜLU
templates, token-in/token-out episodes (the trained ids are the sampled ids; inserted tokens have
mask 0), tools that raise, hang or return junk, and GRPO over episodes. A scripted policy
(``Scripted``) drives episodes whose turns the test chooses; a tiny random model whose EOS is
likely (``eos_model_dir``) drives real sampled episodes of several turns."""

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
from posttrain.train.rl.rollout import HFRollout, rollout_from_rows

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


def test_episode_tokens_are_the_sampled_ids_and_the_template_rendering(template_tokenizer):
    """Scripted turns: a call, then the answer. The episode's mask-1 ids are exactly the scripted
    (sampled) ids, the rest has mask 0, and prompt + episode decode to the template's rendering
    of the whole conversation (up to what the template puts after the final EOS)."""
    tok = template_tokenizer
    policy = Scripted(tok, [CALL, "The answer is 156."])
    mt, out = episodes(policy, tok, tools=["calculator"])
    assert out.end_reasons == ["done"] and out.turns.tolist() == [2] and out.texts == ["The answer is 156."]
    assert out.counts["tool_calls"] == 1 and bool(out.finished[0])
    ids, mask = out.completion_ids[0], out.completion_mask[0]
    n = int((ids != tok.pad_token_id).sum() + (ids == tok.pad_token_id).sum())   # no padding in a single row
    assert n == ids.shape[0]
    first, second = policy.sampled
    assert ids[mask == 1].tolist() == first + second
    assert mask[:len(first)].eq(1).all() and mask[-len(second):].eq(1).all()
    inserted = ids[len(first):-len(second)]
    assert mask[len(first):-len(second)].eq(0).all() and tok.decode(inserted).count("156") == 1
    assert out.sampling_logps[0][mask == 0].eq(0).all() and out.sampling_logps[0][mask == 1].eq(-0.5).all()
    chat = mt.chat
    history = chat.prompt_messages(ROW["messages"]) + [{"role": "assistant", "content": CALL}] + \
        chat.result_messages([("calculator", "156")]) + [{"role": "assistant", "content": "The answer is 156."}]
    full = chat._render(history, False)
    text = tok.decode(out.prompt_ids[0] + ids.tolist())
    assert full.startswith(text) and full[len(text):].strip() == ""


def test_sampled_episodes_train_on_exactly_the_sampled_ids(eos_model_dir):
    """A real sampler (tiny model, HFRollout) over several turns: what each turn's generate
    returned, concatenated, is the episode's mask-1 ids; its log-probs sit at the same places."""
    from posttrain.models import load_model, load_tokenizer

    model, tok = load_model(eos_model_dir).eval(), load_tokenizer(eos_model_dir)
    backend = HFRollout(model, tok)
    calls = []
    generate = backend.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        calls.append([(ids[m.bool()].tolist(), lp[m.bool()].tolist())
                      for ids, m, lp in zip(out.completion_ids, out.completion_mask, out.sampling_logps)])
        return out

    backend.generate = recording
    _, out = episodes(backend, tok, environment="test_tools:NudgeEnvironment", n=4, max_new_tokens=6,
                      max_episode_tokens=60, seeds=[11])
    assert out.turns.max() == 2 and len(calls) == 2    # a second turn was sampled
    for row in range(4):
        expected_ids, expected_lps = [], []
        for turn, sampled in enumerate(calls):
            # an ended episode leaves the batch: turn k's rows are the episodes still running
            running = [r for r in range(4) if out.turns[r] > turn]
            if row in running:
                ids, lps = sampled[running.index(row)]
                expected_ids += ids
                expected_lps += lps
        mask = out.completion_mask[row].bool()
        assert out.completion_ids[row][mask].tolist() == expected_ids
        assert out.sampling_logps[row][mask].tolist() == pytest.approx(expected_lps)
        # one 0.25 per step, and a turn reaches the environment only when it ended in EOS
        steps = int(out.turns[row]) - (out.end_reasons[row] != "done")
        assert out.env_rewards[row] == pytest.approx(0.25 * steps)


# --- failing tools end their episode, never the run


@pytest.mark.parametrize("tool,reason", [
    ("test_tools:broken", "tool broken raised RuntimeError: the backend is down"),
    ("test_tools:sleepy", "timed out after 0.5 s"),
    ("test_tools:junk", "tool junk returned junk"),
])
def test_a_tool_that_raises_hangs_or_returns_junk_ends_its_episode_with_a_reason(tool, reason, tokenizer, caplog):
    name = tool.partition(":")[2]
    call = f'<tool_call>{{"name": "{name}", "arguments": {{"x": 1}}}}</tool_call>'
    policy = Scripted(tokenizer, [call, "never reached"])
    with caplog.at_level("WARNING"):
        _, out = episodes(policy, tokenizer, tools=[tool], timeout=0.5)
    assert out.end_reasons == ["env_failure"] and reason in out.failures[0] and out.turns.tolist() == [1]
    assert reason in caplog.text
    assert policy.calls == 1


@pytest.mark.parametrize("environment,reason", [
    ("test_tools:JunkEnvironment", "step returned junk: a int, not a StepResult"),
    ("test_tools:RaisingEnvironment", "raised KeyError: 'no such board'"),
])
def test_an_environment_that_fails_ends_only_its_episodes(environment, reason, tokenizer):
    _, out = episodes(Scripted(tokenizer, ["A move.", "never reached"]), tokenizer, environment=environment,
                      rows=(ROW, ROW))
    assert out.end_reasons == ["env_failure"] * 2 and out.failures == [reason] * 2


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


def test_a_failed_reset_ends_the_episode_before_any_turn(tokenizer):
    policy = Scripted(tokenizer, ["never sampled"])
    _, out = episodes(policy, tokenizer, environment="test_tools:FailingResetEnvironment")
    assert out.end_reasons == ["env_failure"] and out.failures == ["reset returned junk: a str, not a list of messages"]
    assert policy.calls == 0 and out.turns.tolist() == [0] and out.completion_mask.sum() == 0
    assert out.prompt_ids[0]   # the row's own prompt stands in, so the batch's forwards still have one


def test_a_template_that_is_not_prefix_consistent_is_refused_at_setup(tokenizer):
    import copy

    from posttrain.data.templates import TemplateError

    tok = copy.deepcopy(tokenizer)   # a header that counts the messages changes with every turn
    tok.chat_template = ("{{ messages | length }} messages\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                         "{% endif %}")
    with pytest.raises(TemplateError, match="prefix"):
        episodes(Scripted(tok, ["x"]), tok, tools=["calculator"])


def test_environment_options_reach_the_constructor(tokenizer):
    _, out = episodes(Scripted(tokenizer, ["a", "b", "c", "d"]), tokenizer, environment="test_tools:NudgeEnvironment",
                      options={"steps": 3})
    assert out.end_reasons == ["done"] and out.turns.tolist() == [3] and out.env_rewards.tolist() == [0.75]
    with pytest.raises(ToolError, match="environment_options are for"):
        environment_factory("calculator", options={"steps": 3})


def test_bad_calls_by_the_model_are_answered_and_the_episode_goes_on(tokenizer):
    policy = Scripted(tokenizer, ['<tool_call>{"name": calc}</tool_call>', '<tool_call>{"name": "abacus", '
                                  '"arguments": {}}</tool_call>', CALL, "The answer is 156."])
    _, out = episodes(policy, tokenizer, tools=["calculator"])
    assert out.end_reasons == ["done"] and out.turns.tolist() == [4]
    assert out.counts == {"tool_calls": 2, "parse_failures": 1, "tool_errors": 1,
                          "inserted_tokens": pytest.approx(out.counts["inserted_tokens"])}
    assert "unknown tool 'abacus'" in out.transcripts[0] and "could not read a tool call" in out.transcripts[0]


def test_turn_and_episode_limits_end_episodes(tokenizer):
    long_turn = "word " * 50
    _, out = episodes(Scripted(tokenizer, [long_turn]), tokenizer, tools=["calculator"], max_new_tokens=8)
    assert out.end_reasons == ["turn_tokens"] and not out.finished[0] and int(out.completion_mask.sum()) == 8
    _, out = episodes(Scripted(tokenizer, [CALL] * 4), tokenizer, tools=["calculator"], max_turns=2)
    assert out.end_reasons == ["max_turns"] and out.turns.tolist() == [2]
    _, out = episodes(Scripted(tokenizer, [CALL] * 4), tokenizer, tools=["calculator"], max_episode_tokens=70)
    assert out.end_reasons == ["episode_tokens"] and out.completion_ids.shape[1] <= 70


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


# --- GRPO over episodes


def test_grpo_with_tools_trains_on_episodes_and_changes_parameters(eos_model_dir, tmp_path):
    from safetensors.torch import load_file
    from test_rl import read_metrics, rl_config

    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.trainer import run_rl

    config = rl_config(GRPOConfig, eos_model_dir, tmp_path / "run", environment="test_tools:NudgeEnvironment",
                       max_new_tokens=8, max_episode_tokens=40, save_samples=4)
    run_rl(config)
    records = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert len(records) == 2
    first = records[0]   # sampled before any update (lr 1e-3 soon teaches the tiny model to skip EOS)
    assert first["episode/turns"] > 1 and first["episode/inserted_tokens"] > 0
    assert first["reward/environment"] > 0   # NudgeEnvironment pays 0.25 a step
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert any("Go on." in s["episode"] for s in samples)
    before, after = load_file(f"{eos_model_dir}/model.safetensors"), load_file(tmp_path / "run" / "model" /
                                                                               "model.safetensors")
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


@pytest.mark.parametrize("overrides,message", [
    ({"tools": ["calculator"], "environment": "calculator"}, "not both"),
    ({"tools": ["calculator"], "rollout_backend": "vllm-server", "vllm_server_urls": ["http://node2:8000"]},
     "do not support rollout_backend=vllm-server"),
    ({"tools": ["calculator"], "max_episode_tokens": 4}, "max_episode_tokens=4 is below"),
])
def test_unsupported_tool_options_are_refused(overrides, message, tiny_model_dir, tmp_path):
    from test_rl import rl_config

    from posttrain.config import ConfigError
    from posttrain.train.rl.algorithms.grpo import GRPOConfig

    with pytest.raises(ConfigError, match=message):
        rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", **overrides)


def test_ppo_with_tools_is_refused(tiny_model_dir, tmp_path):
    from test_rl import rl_config

    from posttrain.config import ConfigError
    from posttrain.train.rl.algorithms.ppo import PPOConfig

    with pytest.raises(ConfigError, match=r"ppo \(a value model\)"):
        rl_config(PPOConfig, tiny_model_dir, tmp_path / "x", tools=["calculator"])


def test_unknown_tools_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    from test_rl import rl_config

    from posttrain.config import ConfigError
    from posttrain.train.rl import trainer
    from posttrain.train.rl.algorithms.grpo import GRPOConfig

    monkeypatch.setattr(trainer, "load_policy", lambda *a: pytest.fail("the model was loaded"))
    config = rl_config(GRPOConfig, str(tmp_path / "no-model"), tmp_path / "x", tools=["calculator", "nowhere:tool"])
    with pytest.raises(ConfigError, match="no module named 'nowhere'"):
        trainer.run_rl(config)


# --- the embedded model


@pytest.mark.slow
def test_embedded_model_trains_two_grpo_steps_with_the_calculator(tmp_path):
    """`posttrain grpo tools=[calculator]` on `builtin:arithmetic_tools`, as a user runs it: two
    steps of episodes of the real SmolLM2-135M-Instruct, the tools block in its system turn, the
    held-out set evaluated over the same episodes before and after."""
    from posttrain.cli import main as cli_main
    from test_rl import read_metrics

    out = tmp_path / "tools"
    assert cli_main(["grpo", f"out={out}", "tools=[calculator]", "max_steps=2", "prompts_per_step=2",
                     "group_size=2", "max_new_tokens=32", "max_turns=2", "max_episode_tokens=96",
                     "learning_rate=1e-6", "progress=false", "save_samples=4",
                     "data=[{source: 'builtin:arithmetic_tools', n: 8}]",
                     "eval_data=[{source: 'builtin:arithmetic_tools:test', n: 2}]"]) == 0
    records = read_metrics(out)
    train = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("episode/turns", "episode/tool_calls", "episode/end_done", "reward/environment",
                "rollout/logprob_abs_diff_mean"):
        assert key in train[0], key
    assert train[0]["episode/turns"] >= 1
    assert len([r for r in records if "eval_accuracy" in r]) == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["end"] for s in samples)   # save_samples per step
    assert (out / "model" / "model.safetensors").exists()


# --- posttrain eval on tool tasks


class ToolCallingGenerator:
    """An evaluation generator whose episodes call the calculator on the question's expression
    and answer with the tool's result: what a model that learned the tool would do."""

    def episodes(self, prompts, tools, max_turns, max_new_tokens=256, temperature=0.0, top_p=1.0, num_samples=1,
                 seed=0):
        from posttrain.tools.calculator import calculator

        assert tools == ("calculator",) and max_turns == 3
        out = []
        for messages in prompts:
            expression = messages[-1]["content"].split("?")[0].removeprefix("What is ")
            final = f"The answer is {calculator(expression)}."
            out.append([{"final": final, "episode": f"{CALL}…{final}", "end": "done"}] * num_samples)
        return out


def test_eval_scores_tool_tasks_on_the_final_turn(tmp_path):
    from posttrain.evaluation.runner import evaluate

    result = evaluate(None, "arith_tools_builtin", tmp_path, limit=4, generator=ToolCallingGenerator())
    task = result["tasks"]["arith_tools_builtin"]
    assert task["metrics"][0]["metric"] == "accuracy" and task["metrics"][0]["value"] == 1.0
    records = [json.loads(line) for line in open(task["samples_file"])]
    assert len(records) == 4 and all(r["ends"] == ["done"] and "<tool_call>" in r["episodes"][0] for r in records)


def test_eval_episodes_of_a_real_model_are_seeded_per_prompt(eos_model_dir):
    from posttrain.evaluation.generation import HFGenerator
    from posttrain.models import load_model, load_tokenizer

    gen = HFGenerator(load_model(eos_model_dir), load_tokenizer(eos_model_dir), batch_size=4)
    prompts = [[{"role": "user", "content": f"What is {a} * 7?"}] for a in (123, 456)]
    both = gen.episodes(prompts, ("calculator",), max_turns=2, max_new_tokens=6, temperature=1.0, num_samples=2,
                        seed=5)
    alone = gen.episodes(prompts[1:], ("calculator",), max_turns=2, max_new_tokens=6, temperature=1.0, num_samples=2,
                         seed=6)   # prompt 1 of the first call had seed 5 + 1
    assert [len(e) for e in both] == [2, 2] and both[1] == alone[0]
    assert all(e["end"] in ("done", "turn_tokens", "episode_tokens", "max_turns") for e in both[0])


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
