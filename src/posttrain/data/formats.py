"""The dataset column contract (TRL / open-instruct conventions) and its validation.

| type        | columns                                                          | used by          |
|-------------|------------------------------------------------------------------|------------------|
| sft         | ``messages``: list of ``{"role", "content"}``; or TRL's prompt-   | ``posttrain sft`` |
|             | completion rows, ``prompt`` + ``completion`` (both strings: plain |                  |
|             | text; or a message-list prompt with a string or message-list      |                  |
|             | completion: chat template), loss on the completion only           |                  |
| preference  | ``prompt`` + ``chosen`` + ``rejected`` — each a string or a       | ``dpo``, ``orpo``, |
|             | message list (implicit prompt: chosen/rejected hold the whole     | ``reward``       |
|             | conversation and share their leading turns)                      |                  |
| unpaired    | ``prompt`` + ``completion`` (strings or message lists) + ``label`` | ``kto``          |
|             | (true = desirable); preference rows are accepted too, each as one |                  |
|             | desirable (chosen) and one undesirable (rejected) example         |                  |
| rlvr        | ``prompt`` (string or messages) or ``messages``, ``ground_truth``, | ``grpo``, ``ppo`` … |
|             | ``verifier`` (open-instruct calls it ``dataset``; both accepted)  |                  |
| distill     | a prompt (``prompt``, or ``messages`` ending in a user turn), or   | ``distill``      |
|             | prompt + completion (``prompt`` + ``completion``, or ``messages`` |                  |
|             | ending in assistant turns: those are the completion)             |                  |

Example rows::

    {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]}
    {"prompt": "Summarize: The cat sat on the mat.", "completion": " A cat sat."}
    {"prompt": [{"role": "user", "content": "2+3?"}], "completion": [{"role": "assistant", "content": "5"}]}
    {"prompt": "2+3?", "chosen": "5", "rejected": "6"}
    {"prompt": "2+3?", "completion": "5", "label": true}
    {"messages": [{"role": "user", "content": "2+3?"}], "ground_truth": "5", "verifier": "gsm8k"}

Every problem raises :class:`DataError` naming the source, row and field, and saying how to fix it.
"""

from __future__ import annotations

ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """Bad input data; the message names the source, the row and the field."""


def row_location(row, source: str, index: int) -> str:
    """Where a row came from: its file and own line/row when it was read by ``load_source``
    (``"data/chats.jsonl, line 57"``, whatever mixing and shuffling did), else its 1-based
    position in ``source``."""
    origin = getattr(row, "origin", None)
    if origin is not None:
        return f"{origin[0]}, {origin[1]} {origin[2]}"
    return f"{source}, row {index + 1}"


def _where(source: str, row: int | None, field: str | None = None) -> str:
    parts = [source]
    if row is not None:
        parts.append(f"row {row}")
    if field:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


def check_messages(messages, source: str, row: int, field: str = "messages") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{_where(source, row, field)}: expected a non-empty list of "
                        f"{{'role': ..., 'content': ...}} messages, got {type(messages).__name__}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{_where(source, row, field)}[{j}]: each message needs 'role' and 'content' keys")
        if m["role"] not in ROLES:
            raise DataError(f"{_where(source, row, field)}[{j}]: unknown role {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{_where(source, row, field)}[{j}].content: expected a string, got {type(m['content']).__name__}")
    return messages


def _require(row: dict, field: str, source: str, index: int, hint: str):
    if field not in row or row[field] is None:
        raise DataError(f"{_where(source, index, field)}: missing. {hint} (columns present: {', '.join(row) or 'none'})")
    return row[field]


SFT_HINT = ("SFT rows need a 'messages' list of {role, content}, or 'prompt' + 'completion' (TRL's prompt-completion "
            "type: two strings, or a message-list prompt and a string or message-list completion)")


def validate_sft_row(row: dict, source: str, index: int) -> dict:
    """``{"messages": [...]}``, or ``{"prompt": str | messages, "completion": str | messages}`` for
    a prompt-completion row (``messages`` wins when a row has both, as in UltraChat's columns)."""
    if row.get("messages") is None and ("prompt" in row or "completion" in row):
        return validate_prompt_completion_row(row, source, index)
    messages = _require(row, "messages", source, index, SFT_HINT)
    check_messages(messages, source, index)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{_where(source, index, 'messages')}: no assistant turn to train on")
    if not any(m["content"].strip() for m in messages if m["role"] == "assistant"):
        raise DataError(f"{_where(source, index, 'messages')}: every assistant turn is empty, so the row would "
                        f"train only on the end-of-turn token. Fill in the assistant replies or drop the row")
    return {"messages": messages}


def validate_prompt_completion_row(row: dict, source: str, index: int) -> dict:
    """TRL's prompt-completion row (https://huggingface.co/docs/trl/dataset_formats#prompt-completion).
    Standard: both strings, trained as plain text with no chat template. Conversational: the prompt
    a message list, the completion a message list or a string (one assistant turn); a completion
    that repeats the prompt's turns has them stripped. A string prompt with a message-list
    completion is refused: it is neither type."""
    prompt = _require(row, "prompt", source, index, SFT_HINT)
    completion = _require(row, "completion", source, index, SFT_HINT)
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise DataError(f"{_where(source, index, 'completion')}: the prompt is a string, so the completion must be "
                            f"one too (got {type(completion).__name__}); for a chat row give the prompt as messages, "
                            f"e.g. [{{\"role\": \"user\", \"content\": ...}}]")
        if not prompt.strip():
            raise DataError(f"{_where(source, index, 'prompt')}: empty prompt (for plain language modelling put the "
                            f"text in 'completion' after a short prompt, or use 'messages')")
        if not completion.strip():
            raise DataError(f"{_where(source, index, 'completion')}: empty completion: nothing to train on")
        return {"prompt": prompt, "completion": completion}
    prompt = check_messages(prompt, source, index, "prompt")
    completion = as_messages(completion, "assistant", source, index, "completion")
    if len(completion) > len(prompt) and completion[: len(prompt)] == prompt:   # the prompt repeated: strip it
        completion = completion[len(prompt):]
    if completion[0]["role"] != "assistant":
        raise DataError(f"{_where(source, index, 'completion')}: the completion must start with an assistant turn")
    if not any(m["content"].strip() for m in completion if m["role"] == "assistant"):
        raise DataError(f"{_where(source, index, 'completion')}: empty completion: every assistant turn is empty")
    return {"prompt": prompt, "completion": completion}


def as_messages(value, role: str, source: str, index: int, field: str) -> list[dict]:
    """A string becomes one message of ``role``; a list is checked as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(value, source, index, field)


def validate_preference_row(row: dict, source: str, index: int) -> dict:
    """Normalise to ``{"prompt": messages, "chosen": messages, "rejected": messages}`` where
    chosen/rejected hold only the response turns, so both share exactly the same prompt."""
    chosen = _require(row, "chosen", source, index, "preference rows need 'chosen' and 'rejected'")
    rejected = _require(row, "rejected", source, index, "preference rows need 'chosen' and 'rejected'")
    if "prompt" in row and row["prompt"] is not None:
        prompt = as_messages(row["prompt"], "user", source, index, "prompt")
        chosen = as_messages(chosen, "assistant", source, index, "chosen")
        rejected = as_messages(rejected, "assistant", source, index, "rejected")
        # Some datasets repeat the prompt inside chosen/rejected: strip it once, then check.
        if len(chosen) > len(prompt) and chosen[: len(prompt)] == prompt:
            chosen = chosen[len(prompt):]
        if len(rejected) > len(prompt) and rejected[: len(prompt)] == prompt:
            rejected = rejected[len(prompt):]
    else:  # implicit prompt: every turn before chosen's final assistant turn(s)
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise DataError(f"{_where(source, index, 'prompt')}: missing. String chosen/rejected need a 'prompt' column")
        chosen = check_messages(chosen, source, index, "chosen")
        rejected = check_messages(rejected, source, index, "rejected")
        k = len(chosen)
        while k > 0 and chosen[k - 1]["role"] == "assistant":
            k -= 1
        prompt = chosen[:k]
        if rejected[:k] != prompt:
            raise DataError(f"{_where(source, index, 'rejected')}: the prompt turns of chosen and rejected differ; "
                            f"both must continue exactly the same conversation")
        chosen, rejected = chosen[k:], rejected[k:]
    if not prompt:
        raise DataError(f"{_where(source, index, 'prompt')}: empty prompt")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value or value[0]["role"] != "assistant":
            raise DataError(f"{_where(source, index, name)}: the response must start with an assistant turn "
                            f"(the prompt of chosen and rejected differs?)")
        if not "".join(m["content"] for m in value).strip():
            raise DataError(f"{_where(source, index, name)}: empty response")
    if chosen == rejected:
        raise DataError(f"{_where(source, index, 'chosen')}: chosen equals rejected, so the pair carries no preference")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for extra in ("margin", "subset", "ground_truth", "verifier"):
        if extra in row:
            out[extra] = row[extra]
    return out


UNPAIRED_HINT = ("unpaired preference rows need 'prompt', 'completion' and 'label' (true = desirable, false = "
                 "undesirable); preference rows with 'prompt', 'chosen' and 'rejected' are accepted too")


def validate_unpaired_row(row: dict, source: str, index: int) -> dict:
    """An unpaired preference row (TRL's KTO format) normalised to ``{"prompt": messages,
    "completion": messages, "label": bool}``, the completion holding only the response turns.

    A row with ``chosen`` / ``rejected`` and no ``completion`` is a preference row: it comes back
    as ``validate_preference_row`` returns it, and :func:`unpair` splits it into one desirable and
    one undesirable example. ``label`` is a boolean (0 / 1 accepted)."""
    if "completion" not in row and ("chosen" in row or "rejected" in row):
        return validate_preference_row(row, source, index)
    completion = _require(row, "completion", source, index, UNPAIRED_HINT)
    label = _require(row, "label", source, index, UNPAIRED_HINT)
    if not isinstance(label, bool):
        if type(label) is not int or label not in (0, 1):
            raise DataError(f"{_where(source, index, 'label')}: expected true (desirable) or false (undesirable), "
                            f"got {label!r}")
        label = bool(label)
    prompt = as_messages(_require(row, "prompt", source, index, UNPAIRED_HINT), "user", source, index, "prompt")
    completion = as_messages(completion, "assistant", source, index, "completion")
    if len(completion) > len(prompt) and completion[: len(prompt)] == prompt:   # the prompt repeated: strip it
        completion = completion[len(prompt):]
    if not "".join(m["content"] for m in prompt).strip():
        raise DataError(f"{_where(source, index, 'prompt')}: empty prompt")
    if completion[0]["role"] != "assistant":
        raise DataError(f"{_where(source, index, 'completion')}: the completion must start with an assistant turn")
    if not "".join(m["content"] for m in completion).strip():
        raise DataError(f"{_where(source, index, 'completion')}: empty completion")
    out = {"prompt": prompt, "completion": completion, "label": label}
    if "subset" in row:
        out["subset"] = row["subset"]
    return out


def unpair(row: dict) -> list[dict]:
    """A row normalised by :func:`validate_unpaired_row` as unpaired examples: itself, or a
    preference row's chosen (desirable) and rejected (undesirable) completions of its prompt."""
    if "completion" in row:
        return [row]
    extra = {"subset": row["subset"]} if "subset" in row else {}
    return [{"prompt": row["prompt"], "completion": row["chosen"], "label": True, **extra},
            {"prompt": row["prompt"], "completion": row["rejected"], "label": False, **extra}]


def validate_rlvr_row(row: dict, source: str, index: int, needs_answer: bool = True) -> dict:
    """Normalise to ``{"messages": prompt messages, "ground_truth": ..., "verifier": name}``.
    With ``needs_answer=False`` (rewards from functions or reward models only) a prompt is enough;
    ``ground_truth`` and ``verifier`` pass through when present."""
    if row.get("messages") is not None:
        messages = check_messages(row["messages"], source, index)
        if messages[-1]["role"] == "assistant":  # open-instruct rows sometimes carry the answer
            messages = messages[:-1]
    elif row.get("prompt") is not None:
        messages = as_messages(row["prompt"], "user", source, index, "prompt")
    else:
        raise DataError(f"{_where(source, index, 'prompt')}: missing. RLVR rows need 'prompt' or 'messages'")
    if not messages:
        raise DataError(f"{_where(source, index, 'messages')}: no prompt turns")
    if not "".join(m["content"] for m in messages).strip():
        field = "messages" if row.get("messages") is not None else "prompt"
        raise DataError(f"{_where(source, index, field)}: the prompt is empty; every RL row needs a question "
                        f"for the model to answer")
    verifier = row.get("verifier", row.get("dataset"))
    if not needs_answer and row.get("ground_truth") is None and verifier is None:
        out = {k: v for k, v in row.items() if k not in ("messages", "prompt", "ground_truth", "verifier")}
        out["messages"] = messages
        return out
    truth = _require(row, "ground_truth", source, index, "RLVR rows need the answer to verify in 'ground_truth' "
                     "(or use only function / reward_model reward components, which need just a prompt)")
    if isinstance(verifier, list):  # open-instruct stores a one-element list
        verifier = verifier[0] if verifier else None
    if isinstance(truth, list) and len(truth) == 1 and not isinstance(truth[0], (dict, list)):
        truth = truth[0]
    if verifier is None:
        raise DataError(f"{_where(source, index, 'verifier')}: missing. Name the verifier per row "
                        f"('verifier' or open-instruct's 'dataset' column), e.g. gsm8k, math, ifeval")
    out = {k: v for k, v in row.items() if k not in ("messages", "prompt", "dataset")}
    out.update({"messages": messages, "ground_truth": truth, "verifier": str(verifier).lower()})
    return out


def validate_rl_prompt_row(row: dict, source: str, index: int) -> dict:
    """An RL prompt row for rewards that need no answer (functions, reward models)."""
    return validate_rlvr_row(row, source, index, needs_answer=False)


def validate_distill_row(row: dict, source: str, index: int) -> dict:
    """A distillation row normalised to ``{"messages": prompt messages, "completion": response
    messages or None}``: ``messages`` whose last turns are the assistant's give the prompt (the turns
    before them) and the completion (those turns); ``prompt`` (string or messages) with an optional
    ``completion`` (string or messages; a repeated prompt is stripped). Other columns are ignored."""
    completion = None
    if row.get("messages") is not None:
        messages = check_messages(row["messages"], source, index)
        k = len(messages)
        while k > 0 and messages[k - 1]["role"] == "assistant":
            k -= 1
        prompt, completion = messages[:k], (messages[k:] or None)
        field = "messages"
    elif row.get("prompt") is not None:
        prompt = as_messages(row["prompt"], "user", source, index, "prompt")
        if row.get("completion") is not None:
            completion = as_messages(row["completion"], "assistant", source, index, "completion")
            if len(completion) > len(prompt) and completion[: len(prompt)] == prompt:
                completion = completion[len(prompt):]
        field = "prompt"
    else:
        raise DataError(f"{_where(source, index, 'prompt')}: missing. Distillation rows need 'prompt' (with an "
                        f"optional 'completion') or 'messages'")
    if not "".join(m["content"] for m in prompt).strip():
        raise DataError(f"{_where(source, index, field)}: the prompt is empty; the student needs a prompt to "
                        f"complete")
    if completion is not None:
        name = "messages" if field == "messages" else "completion"
        if completion[0]["role"] != "assistant":
            raise DataError(f"{_where(source, index, name)}: the completion must start with an assistant turn")
        if not "".join(m["content"] for m in completion).strip():
            raise DataError(f"{_where(source, index, name)}: empty completion (drop the column, or the row)")
    return {"messages": prompt, "completion": completion}


VALIDATORS = {"sft": validate_sft_row, "preference": validate_preference_row, "unpaired": validate_unpaired_row,
              "rlvr": validate_rlvr_row, "rl_prompt": validate_rl_prompt_row, "distill": validate_distill_row}


def validate_rows(rows: list[dict], kind: str, source: str) -> list[dict]:
    return [row for _, row in validate_located_rows(rows, kind, source)]


def validate_located_rows(rows: list, kind: str, source: str) -> list[tuple[str, dict]]:
    """Validate every row as ``kind``; returns (location, normalised row) pairs, the location
    naming the row's file and own line (``row_location``)."""
    if kind not in VALIDATORS:
        raise ValueError(f"unknown data kind {kind!r}")
    if not rows:
        raise DataError(f"{source}: no rows (empty file or split)")
    check = VALIDATORS[kind]
    out = []
    for i, row in enumerate(rows):
        where = row_location(row, source, i)
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with named columns, got {type(row).__name__}")
        out.append((where, check(row, where, None)))
    return out
