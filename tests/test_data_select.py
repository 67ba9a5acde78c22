"""Data selection (posttrain.data.select): cross-task nearest neighbours on a synthetic pool with
known clusters, the merge rule by hand, approximate-search recall against exact search, the
embedding cache, rows and ids written byte for byte, quality rating, mixture entries, and bad
input named by file, line and field. A fake encoder stands in for MiniLM (which takes ~15 s to
load here); one ``slow`` test runs the real one."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from posttrain.data.formats import DataError
from posttrain.data.neighbours import IVFIndex, exact_neighbours, merge_neighbours
from posttrain.data.select import (Encoder, neighbour_selection, rating_scores, select_by_rating, select_neighbours,
                                   selection_sidecar)
from posttrain.data.sources import load_source, mix_sources

CLUSTERS = ["astronomy", "baking", "chess", "diving", "economics"]
DIM = 16


def _unit(v):
    return torch.nn.functional.normalize(v, dim=-1)


class ClusterEncoder(Encoder):
    """Text "<topic> question <i>" → its topic's centre plus small noise seeded by the text: rows of
    one topic are each other's nearest neighbours, far from every other topic. Counts its calls."""

    def __init__(self):
        centres = _unit(torch.randn(len(CLUSTERS), DIM, generator=torch.Generator().manual_seed(0)))
        self.centres = dict(zip(CLUSTERS, centres))
        self.calls, self.texts_encoded = 0, 0
        super().__init__("test-cluster-encoder", self.encode_texts)

    def encode_texts(self, texts):
        self.calls += 1
        self.texts_encoded += len(texts)
        out = []
        for text in texts:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            noise = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
            out.append(_unit(self.centres[text.split()[0]] + 0.05 * noise))
        return torch.stack(out)


def pool_rows(per_topic: int = 10) -> list[dict]:
    rows = [{"id": f"{topic}-{i}", "messages": [{"role": "user", "content": f"{topic} question {i}"},
                                               {"role": "assistant", "content": f"answer {i}"}]}
            for topic in CLUSTERS for i in range(per_topic)]
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture
def home(isolated_posttrain_home):
    return isolated_posttrain_home


def test_selected_rows_are_the_targets_clusters(home):
    pool = pool_rows()
    target = [{"prompt": "baking question 100"}, {"prompt": "diving question 101"}, {"prompt": "baking question 102"}]
    chosen = select_neighbours(pool, target, k=20, encoder=ClusterEncoder())
    assert sorted(r["id"].split("-")[0] for r in chosen) == ["baking"] * 10 + ["diving"] * 10
    assert chosen == [r for r in pool if r in chosen]   # unchanged rows, pool order
    # approximate search with every list probed is exact search
    assert select_neighbours(pool, target, k=20, encoder=ClusterEncoder(), search="approximate", nprobe=100) == chosen


def test_merge_rule_by_hand():
    # Two targets, neighbours best first. Round 1 adds pool 7 (0.9, target 0) and pool 3 (0.8,
    # target 1). Round 2: target 0's 2nd is pool 3, already in; target 1's 2nd is pool 5 (0.6).
    # Round 3: pool 1 (0.5, target 0) enters before pool 2 (0.4, target 1) by similarity.
    index = torch.tensor([[7, 3, 1], [3, 5, 2]])
    scores = torch.tensor([[0.9, 0.7, 0.5], [0.8, 0.6, 0.4]])
    picked = merge_neighbours(scores, index, k=4)
    assert [(p["index"], p["target"], p["rank"]) for p in picked] == [(7, 0, 1), (3, 1, 1), (5, 1, 2), (1, 0, 3)]
    assert [p["index"] for p in merge_neighbours(scores, index, k=10)] == [7, 3, 5, 1, 2]   # lists run out
    # −1 (an approximate search that found nothing more) is skipped
    assert [p["index"] for p in merge_neighbours(scores, torch.tensor([[7, -1, -1], [3, 5, -1]]), k=4)] == [7, 3, 5]


def test_exact_search_is_chunk_invariant_and_deepens_until_k(home):
    generator = torch.Generator().manual_seed(1)
    pool, queries = _unit(torch.randn(300, 8, generator=generator)), _unit(torch.randn(7, 8, generator=generator))
    whole = exact_neighbours(queries, pool, 5)
    chunked = exact_neighbours(queries, pool, 5, max_block=300 * 2)   # two queries per block
    assert torch.equal(whole[1], chunked[1]) and torch.allclose(whole[0], chunked[0])
    assert torch.equal(whole[1][:, 0], (queries @ pool.T).argmax(1))
    # one target, k = 30: the first depth (2·30) is enough; k = pool size needs every row
    pool_rows_ = pool_rows()
    selection = neighbour_selection(pool_rows_, [{"prompt": "chess question 0"}], k=len(pool_rows_),
                                    encoder=ClusterEncoder())
    assert sorted(c["index"] for c in selection) == list(range(len(pool_rows_)))
    assert [c["rank"] for c in selection] == list(range(1, len(pool_rows_) + 1))


def test_approximate_recall_against_exact_on_random_vectors():
    """IVF on 4000 random unit vectors in 16-d, 63 lists (√4000), 200 queries, 10 neighbours,
    seed 0: recall@10 is 0.931 with 16 lists probed and 0.9965 with 32 (measured, pinned as
    lower bounds ≥ 0.9 and ≥ 0.99); probing every list is exact search."""
    generator = torch.Generator().manual_seed(0)
    pool = _unit(torch.randn(4000, 16, generator=generator))
    queries = _unit(torch.randn(200, 16, generator=generator))
    exact = exact_neighbours(queries, pool, 10)[1]
    index = IVFIndex(pool, seed=0)

    def recall(nprobe):
        found = index.search(queries, 10, nprobe)[1]
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact)) / exact.numel()

    recalls = [recall(n) for n in (4, 8, 16, 32)]
    assert recalls == sorted(recalls) and recalls[2] >= 0.9 and recalls[3] >= 0.99
    assert recall(len(index.lists)) == 1.0


def test_embeddings_are_cached_by_content(home):
    pool, target = pool_rows(), [{"prompt": "chess question 9"}]
    encoder = ClusterEncoder()
    first = neighbour_selection(pool, target, k=5, encoder=encoder)
    assert encoder.calls == 2 and encoder.texts_encoded == len(pool) + 1
    again = neighbour_selection(pool, target, k=5, encoder=encoder)
    assert again == first and encoder.calls == 2   # both read from the cache: nothing embedded
    changed = [dict(r) for r in pool]
    changed[0]["messages"] = [{"role": "user", "content": "economics question 99"}]
    neighbour_selection(changed, target, k=5, encoder=encoder)
    assert encoder.calls == 3   # a changed pool is a new key; the target is still cached
    neighbour_selection(pool, target, k=5, encoder=encoder, cache=False)
    assert encoder.calls == 5


def _write_pool(path, rows_text: list[str]):
    path.write_bytes("\n".join(rows_text).encode("utf-8") + b"\n")


def test_cli_writes_rows_byte_for_byte_with_ids(tmp_path, home):
    from posttrain.cli import main

    # odd spacing, key order, escapes and unicode must survive; only some rows carry an id
    lines = [json.dumps({"prompt": f"{t} question {i}", "meta": {"é": i}}, ensure_ascii=i % 2 == 0)
             .replace(": ", ":  ") + ("" if i % 3 else " ") for t in CLUSTERS for i in range(4)]
    lines[5] = '{"id": "row-6",   "prompt": "baking question 77", "x": [1,2]}'
    pool, target, out = tmp_path / "pool.jsonl", tmp_path / "target.jsonl", tmp_path / "sel" / "selected.jsonl"
    _write_pool(pool, lines)
    target.write_text(json.dumps({"prompt": "baking question 100"}) + "\n")
    assert main(["data", "select", "--pool", str(pool), "--target", str(target), "--k", "5", "--out", str(out),
                 "--encoder", "hash:64"]) == 0
    written = out.read_bytes().split(b"\n")[:-1]
    side = [json.loads(line) for line in selection_sidecar(out).read_text().splitlines()]
    assert len(written) == len(side) == 5
    for raw, record in zip(written, side):
        assert raw == lines[record["line"] - 1].encode("utf-8")   # the pool's own line, byte for byte
        assert record["id"] == json.loads(raw).get("id") and record["target"] == 1 and record["rank"] >= 1
    assert [r["line"] for r in side] == sorted(r["line"] for r in side)   # pool order
    assert any(r["id"] == "row-6" for r in side)   # the baking row that has an id is among the nearest


def test_bad_input_is_named_by_file_line_and_field(tmp_path, home, capsys):
    from posttrain.cli import main

    pool = tmp_path / "pool.jsonl"
    _write_pool(pool, [json.dumps({"prompt": "a"}), json.dumps({"prompt": "b"}), json.dumps({"text": "c"})])
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps({"prompt": "x"}) + "\n")
    encoder = ClusterEncoder()
    with pytest.raises(DataError, match=r"pool.jsonl, line 3, field 'prompt': missing .*--field NAME"):
        neighbour_selection(load_source(str(pool)), load_source(str(target)), k=1, encoder=encoder)
    with pytest.raises(DataError, match=r"pool.jsonl, line 1, field 'text': missing"):
        neighbour_selection(load_source(str(pool)), load_source(str(target)), k=1, encoder=encoder, field="text")
    with pytest.raises(DataError, match="k=4 but .* has 3 rows"):
        neighbour_selection(load_source(str(pool)), load_source(str(target)), k=4, encoder=encoder)
    assert encoder.calls == 0   # every check comes before the encoder runs
    _write_pool(pool, [json.dumps({"prompt": "a"}), "{not json"])
    argv = ["data", "select", "--pool", str(pool), "--target", str(target), "--k", "1", "--out", str(tmp_path / "o.jsonl")]
    assert main(argv) == 2
    assert "pool.jsonl, line 2: not valid JSON" in capsys.readouterr().err
    assert main(argv[:6] + ["--out", str(tmp_path / "o.jsonl"), "--keep", "3"]) == 2
    assert "nearest-neighbour mode takes --k N" in capsys.readouterr().err


def _graded_rows():
    """Arithmetic rows whose answers are right (even i) or wrong (odd i)."""
    return [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"The answer is {i + 1 if i % 2 == 0 else i + 5}."}],
             "ground_truth": str(i + 1), "verifier": "gsm8k", "id": i} for i in range(6)]


def test_rating_keeps_the_best_rows(tmp_path, tiny_rm_dir):
    rows = _graded_rows()
    assert [r["id"] for r in select_by_rating(rows, "verifier", keep=3)] == [0, 2, 4]
    assert [r["id"] for r in select_by_rating(rows, "verifier:gsm8k", keep=0.5)] == [0, 2, 4]
    # a reward model: the kept rows are those with the highest scores, in pool order
    scores = rating_scores(rows, tiny_rm_dir)
    best = sorted(range(6), key=lambda i: -scores[i])[:2]
    assert [r["id"] for r in select_by_rating(rows, tiny_rm_dir, keep=2)] == sorted(best)
    with pytest.raises(DataError, match=r"keep=7: the pool has 6 rows"):
        select_by_rating(rows, "verifier", keep=7)
    with pytest.raises(DataError, match=r"row 2, field 'ground_truth': missing"):
        select_by_rating([rows[0], {k: v for k, v in rows[1].items() if k != "ground_truth"}], "verifier", keep=1)
    with pytest.raises(DataError, match=r"row 1, field 'messages': a rated row needs a response"):
        rating_scores([{"prompt": "only a prompt"}], "verifier")


def test_mixture_entries_select(tmp_path, home):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _graded_rows()))
    rated = mix_sources([{"source": str(pool), "select": {"rate_with": "verifier", "keep": 3}}])
    assert sorted(r["id"] for r in rated) == [0, 2, 4]
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps({"prompt": "What is 4 + 1?"}) + "\n")
    near = mix_sources([{"source": str(pool), "select": {"target": str(target), "k": 1, "encoder": "hash:64"},
                         "count": 2}])
    assert [r["id"] for r in near] == [4, 4]   # the selected row, then count repeats it
    with pytest.raises(DataError, match=r"entry 1 .*select has unknown key 'kk'"):
        mix_sources([{"source": str(pool), "select": {"target": str(target), "kk": 1}}])
    with pytest.raises(DataError, match=r"select needs 'target' .* or 'rate_with'"):
        mix_sources([{"source": str(pool), "select": {"k": 1}}])


@pytest.mark.slow
def test_minilm_selects_the_semantically_nearest_rows(tmp_path, home):
    """The embedded MiniLM: cooking targets pick the cooking rows out of a cooking/arithmetic/chess pool."""
    cooking = ["How long should I knead bread dough?", "What temperature do I roast a chicken at?",
               "How do I make a roux for gravy?", "Why did my cake sink in the middle?"]
    other = ["What is 17 times 23?", "Compute 45 minus 19.", "What is the square root of 144?",
             "How does the knight move in chess?", "What is castling in chess?", "Divide 81 by 9."]
    pool = [{"prompt": p} for p in other[:3] + cooking + other[3:]]
    target = [{"prompt": "How do I bake sourdough bread?"}, {"prompt": "What is a good pancake recipe?"}]
    chosen = select_neighbours(pool, target, k=4)
    assert sorted(r["prompt"] for r in chosen) == sorted(cooking)
