"""Data layer: masks against hand-written expectations, packing, sources, mixer, cache, validation."""

import json

import pytest
import torch

from posttrain.data import DataError, encode_conversation, load_source, mix_sources, validate_rows
from posttrain.data.packing import collate_packed, collate_padded, pack_sequences

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def _trained_pieces(tokenizer, enc):
    return [tokenizer.decode([t]) for t, l in zip(enc["input_ids"], enc["labels"]) if l != -100]


def test_tulu_template_renders_exactly_and_masks_all_but_assistant_content(tokenizer):
    enc = encode_conversation(tokenizer, CONVERSATION, template="tulu")
    # Hand-written: TÜLU's format, EOS after each assistant turn, "\n" after it unless last.
    expected_text = ("<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\nHello!<|im_end|>\n"
                     "<|user|>\n2+2?\n<|assistant|>\n4<|im_end|>")
    assert tokenizer.decode(enc["input_ids"]) == expected_text
    assert _trained_pieces(tokenizer, enc) == ["Hello", "!", "<|im_end|>", "4", "<|im_end|>"]
    # Every label is either -100 or the token itself (no shifted or foreign labels).
    assert all(l in (-100, t) for t, l in zip(enc["input_ids"], enc["labels"]))
    from posttrain.data import TEMPLATES

    gen = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True,
                                        chat_template=TEMPLATES["tulu"])
    assert gen == "<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\n"


def test_chatml_template_masks_header_and_trailing_newline(tokenizer):
    enc = encode_conversation(tokenizer, CONVERSATION, template="chatml")
    expected_text = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                     "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                     "<|im_start|>assistant\n4<|im_end|>\n")
    assert tokenizer.decode(enc["input_ids"]) == expected_text
    pieces = [tokenizer.decode([t]) for t in enc["input_ids"]]
    mask = [l != -100 for l in enc["labels"]]
    # Hand-written expected mask: True exactly on "Hello", "!", <|im_end|> of turn 1 and "4", <|im_end|> of turn 2.
    hello = pieces.index("Hello")
    four = len(pieces) - 3
    expected = [False] * len(pieces)
    for i in (hello, hello + 1, hello + 2, four, four + 1):
        expected[i] = True
    assert pieces[four:four + 3] == ["4", "<|im_end|>", "\n"]
    assert mask == expected


def test_tokenizer_own_template_and_max_length(tokenizer):
    enc = encode_conversation(tokenizer, CONVERSATION[1:3])  # SmolLM2 adds its default system prompt
    assert "You are a helpful AI assistant" in tokenizer.decode(enc["input_ids"])
    assert _trained_pieces(tokenizer, enc) == ["Hello", "!", "<|im_end|>"]
    short = encode_conversation(tokenizer, CONVERSATION, template="chatml", max_length=10)
    assert len(short["input_ids"]) == 10 and all(l == -100 for l in short["labels"])


def test_unknown_template_is_a_clear_error(tokenizer):
    from posttrain.data import TemplateError

    with pytest.raises(TemplateError, match="unknown chat template 'vicuna'.*tulu"):
        encode_conversation(tokenizer, CONVERSATION, template="vicuna")


def test_packed_logits_equal_one_by_one(tokenizer):
    from conftest import build_tiny_model

    model = build_tiny_model(tokenizer).eval()
    rows = load_source("builtin:arithmetic_sft", n=6, seed=1)
    examples = [encode_conversation(tokenizer, r["messages"], template="chatml") for r in rows]
    packed_rows = pack_sequences(examples, max_length=256)
    assert len(packed_rows) < len(examples)  # several conversations share a row
    batch = collate_packed(examples, packed_rows, tokenizer.pad_token_id, max_length=256)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for b, row in enumerate(packed_rows):
            t = 0
            for i in row:
                ids = torch.tensor([examples[i]["input_ids"]])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                n = ids.shape[1]
                assert torch.allclose(packed[b, t:t + n], alone, atol=1e-5), (b, i)
                t += n


def test_best_fit_packing_respects_capacity():
    examples = [{"input_ids": [0] * n, "labels": [0] * n} for n in (90, 60, 50, 40, 30, 10, 10)]
    rows = pack_sequences(examples, max_length=100)
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert all(sum(len(examples[i]["input_ids"]) for i in row) <= 100 for row in rows)
    assert len(rows) == 3  # 290 tokens need at least 3 rows of 100


def test_padded_fallback_masks_padding(tokenizer):
    ex = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    batch = collate_padded(ex, pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_builtin_splits_never_overlap_and_are_seeded():
    train = load_source("builtin:arithmetic_sft", n=500, seed=0)
    test = load_source("builtin:arithmetic_sft:test", n=200, seed=0)
    q = lambda rows: {r["messages"][0]["content"] for r in rows}  # noqa: E731
    assert not q(train) & q(test)
    assert load_source("builtin:arithmetic_sft", n=50, seed=7) == load_source("builtin:arithmetic_sft", n=50, seed=7)
    assert load_source("builtin:arithmetic_sft", n=50, seed=7) != load_source("builtin:arithmetic_sft", n=50, seed=8)
    row = train[0]
    assert row["messages"][1]["content"].endswith(f"The answer is {row['ground_truth']}.")


def test_mixer_counts_fractions_upsampling_and_reproducibility(tmp_path):
    path = tmp_path / "small.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mix = [{"source": str(path), "count": 25}, {"source": "builtin:arithmetic_sft", "count": 5},
           {"source": str(path), "fraction": 0.5}]
    a, b = mix_sources(mix, seed=3), mix_sources(mix, seed=3)
    assert a == b and len(a) == 25 + 5 + 5
    from collections import Counter

    counts = Counter(r["messages"][0]["content"] for r in a if r["messages"][0]["content"].startswith("q"))
    assert sum(counts.values()) == 30 and all(c >= 2 for c in counts.values())  # every row at least twice
    assert mix_sources(mix, seed=4) != a


def test_parquet_and_json_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(rows))
    assert load_source(str(tmp_path / "p.parquet")) == rows == load_source(str(tmp_path / "p.json"))


def test_tokenized_cache_reuses_and_invalidates(tokenizer, tmp_path):
    from posttrain.data.cache import cached_tokenize

    rows = load_source("builtin:arithmetic_sft", n=4)
    calls = []

    def fn(rs):
        calls.append(len(rs))
        return [encode_conversation(tokenizer, r["messages"]) for r in rs]

    first, hit1 = cached_tokenize(rows, tokenizer, {"max_length": 64}, fn, root=tmp_path)
    second, hit2 = cached_tokenize(rows, tokenizer, {"max_length": 64}, fn, root=tmp_path)
    assert (hit1, hit2) == (False, True) and first == second and calls == [4]
    cached_tokenize(rows, tokenizer, {"max_length": 65}, fn, root=tmp_path)  # settings changed
    cached_tokenize(rows[:3], tokenizer, {"max_length": 64}, fn, root=tmp_path)  # data changed
    assert calls == [4, 4, 3]


# ------------------------------------------------------------------ bad input
def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_missing_column_names_file_row_and_field(tmp_path):
    src = _write(tmp_path, "d.jsonl", json.dumps({"messages": [{"role": "user", "content": "x"},
                                                               {"role": "assistant", "content": "y"}]})
                 + "\n" + json.dumps({"text": "no messages"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl, line 2, field 'messages': missing.*columns present: text"):
        validate_rows(load_source(src), "sft", src)


def test_wrong_type_names_the_field(tmp_path):
    with pytest.raises(DataError, match=r"row 1, field 'messages'\[0\].content: expected a string, got int"):
        validate_rows([{"messages": [{"role": "user", "content": 3}]}], "sft", "x.jsonl")
    with pytest.raises(DataError, match=r"unknown role 'bot'"):
        validate_rows([{"messages": [{"role": "bot", "content": "hi"}]}], "sft", "x.jsonl")


def test_empty_file_and_malformed_json_line(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_source(_write(tmp_path, "empty.jsonl", ""))
    bad = _write(tmp_path, "bad.jsonl", '{"messages": []}\n{"messages": [oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_source(bad)


def test_missing_local_path_and_offline_hub_name():
    with pytest.raises(DataError, match="does not exist"):
        load_source("./nowhere/data.jsonl")
    with pytest.raises(DataError, match=r"'someone/some-dataset'.*offline mode.*local .jsonl"):
        load_source("someone/some-dataset")
    with pytest.raises(DataError, match="unknown built-in dataset 'nope'"):
        load_source("builtin:nope")


def test_preference_rows_normalise_and_reject_bad_pairs():
    ok = validate_rows([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], "preference", "p")[0]
    assert ok["prompt"] == [{"role": "user", "content": "2+2?"}]
    implicit = validate_rows([{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}],
                             "preference", "p")[0]
    assert implicit["prompt"] == [{"role": "user", "content": "q"}] and implicit["chosen"][0]["content"] == "a"
    cases = [
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen equals rejected"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "empty response"),
        ({"chosen": "a", "rejected": "b"}, "field 'prompt': missing"),
        ({"chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]}, "prompt turns .* differ"),
    ]
    for row, message in cases:
        with pytest.raises(DataError, match=message):
            validate_rows([row], "preference", "pairs.jsonl")


def test_rlvr_rows_accept_open_instruct_dataset_column():
    row = validate_rows([{"messages": [{"role": "user", "content": "1+1?"}], "ground_truth": "2",
                          "dataset": ["gsm8k"]}], "rlvr", "r")[0]
    assert row["verifier"] == "gsm8k" and row["messages"][-1]["role"] == "user"
    with pytest.raises(DataError, match="field 'verifier': missing"):
        validate_rows([{"prompt": "1+1?", "ground_truth": "2"}], "rlvr", "r")


def _final_number(text: str) -> int:
    return int(text.rsplit("The answer is ", 1)[1].rstrip("."))


def test_arithmetic_preference_mistakes_are_the_named_kinds():
    from posttrain.data.builtin import EQUATION, arithmetic_preference

    default = arithmetic_preference(n=30, difficulty=(1, 2, 3))
    assert default == arithmetic_preference(n=30, difficulty=(1, 2, 3), mistakes=["slip"])  # default unchanged
    for row in default:  # a slip: every line but the last two is the chosen answer's
        chosen, rejected = (row[k][0]["content"].splitlines() for k in ("chosen", "rejected"))
        assert rejected[:-2] == chosen[:-2] and rejected[-2] != chosen[-2]

    rows = arithmetic_preference(n=60, difficulty=(1, 3), mistakes=["operation", "dropped_step"])
    kinds = []
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert _final_number(chosen) == int(row["ground_truth"]) != _final_number(rejected)
        correct_arithmetic = all({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(r)
                                 for a, op, b, r in EQUATION.findall(rejected))
        ops = lambda text: [op for _, op, _, _ in EQUATION.findall(text)]
        if len(rejected.splitlines()) < len(chosen.splitlines()):
            kinds.append("dropped_step")   # stops after the product, whose result it reports
            assert correct_arithmetic and ops(rejected) == ["*"]
        elif ops(rejected) != ops(chosen):
            kinds.append("operation")      # the wrong operation, the arithmetic itself right
            assert correct_arithmetic
        else:
            kinds.append("slip")           # fallback where the other mistake gives no wrong answer
            assert not correct_arithmetic
    assert kinds.count("operation") > 20 and kinds.count("dropped_step") > 10
    with pytest.raises(ValueError, match="mistakes=.*choose from slip, operation, dropped_step"):
        arithmetic_preference(n=2, mistakes=["typo"])


def test_arithmetic_shift_is_seeded_and_off_the_difficulty3_training_distribution():
    import re

    from posttrain.data.builtin import arithmetic_sft, arithmetic_shift
    from posttrain.evaluation.tasks import TASKS, TaskContext

    rows = arithmetic_shift(n=150)
    assert rows == arithmetic_shift(n=150) and rows != arithmetic_shift(n=150, seed=1)
    assert [r["shift"] for r in rows[:6]] == ["phrasing", "numbers", "both"] * 2
    # difficulty 3's own template; its ranges are boxes 2-9, per 2-12, extra 1-20
    trained = re.compile(r"^\w+ has \d+ \w+ with \d+ \w+ in each, and \d+ loose \w+\. How many \w+ does \w+ have in total\?")
    train = {r["messages"][0]["content"] for r in arithmetic_sft(n=2000, difficulty=(3,))}
    for r in rows:
        question = r["messages"][0]["content"]
        boxes, per, extra = map(int, re.findall(r"\d+", question))
        assert int(r["ground_truth"]) == boxes * per + extra and question not in train
        assert bool(trained.match(question)) == (r["shift"] == "numbers")     # a new template unless only numbers move
        assert (per > 12 and extra > 20) == (r["shift"] != "phrasing")        # larger numbers unless only phrasing moves
        assert per <= 25 and extra <= 60
    samples = TASKS["arith_shift_builtin"].load(TaskContext(limit=30))
    assert [s["shift"] for s in samples] == [r["shift"] for r in arithmetic_shift(n=30)]
    assert len({s["prompt_text"] for s in samples}) == 30
