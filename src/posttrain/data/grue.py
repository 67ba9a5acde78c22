"""Hub loaders for the real GRUE datasets of RL4LMs (Ramamurthy et al. 2023): each maps its
dataset's own schema to our RL rows (``messages`` + ``ground_truth`` + ``verifier``, or bare
prompts for a classifier reward) and SFT rows (``messages``, or prompt-completion).

Through the sources (``data/sources.py``): ``grue:<dataset>_<rlvr|sft>[:split]``, e.g.
``data=[grue:common_gen_rlvr]``, ``eval_data=[grue:cnn_dailymail_rlvr:test]``; the hub names
below, or a local file in the same schema with ``{source: grue:imdb_sft, file: imdb.parquet}``.

| dataset | hub | schema | RL rows | SFT rows |
|---|---|---|---|---|
| ``common_gen`` | ``allenai/common_gen`` | concept_set_idx, concepts, target | one per concept set; ``concept_coverage`` of its concepts | one per target sentence |
| ``cnn_dailymail`` | ``abisee/cnn_dailymail`` (3.0.0) | article, highlights, id | ``Summarize: article``; ``rouge`` against the highlights | the highlights as the answer |
| ``imdb`` | ``stanfordnlp/imdb`` | text, label (0 neg, 1 pos) | the review's first ``prefix_words`` words as a bare prompt (reward: a sentiment ``classifier``, RL4LMs' IMDB task) | prompt-completion: the prefix, then the rest of the review |

RL4LMs' prompts: CommonGen "generate a sentence with: c1 c2 …" (here as an instruction with
commas), CNN/DailyMail "Summarize: " + article, IMDB the first 64 tokens of a review (here words).
"""

from __future__ import annotations

import re

from posttrain.data.formats import DataError

__all__ = ["GRUE_HUB", "common_gen_rows", "cnn_dailymail_rows", "imdb_rows", "load_grue"]

GRUE_HUB = {"common_gen": ("allenai/common_gen", None), "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0"),
            "imdb": ("stanfordnlp/imdb", None)}
KINDS = ("rlvr", "sft")


def _need(rows: list[dict], columns: tuple[str, ...], dataset: str) -> list[dict]:
    for i, r in enumerate(rows):
        missing = [c for c in columns if c not in r]
        if missing:
            raise DataError(f"{dataset} row {i + 1}: missing column(s) {', '.join(missing)}; the {dataset} schema "
                            f"has {', '.join(columns)}")
    return rows


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def common_gen_rows(rows: list[dict], kind: str = "rlvr") -> list[dict]:
    """CommonGen rows (one per (concept set, target)) → RL rows, one per concept set (its targets as
    ``reference``), or SFT rows, one per target."""
    from posttrain.data.builtin_grue import INSTRUCTION_COMMONGEN

    out, by_set = [], {}
    for r in _need(rows, ("concept_set_idx", "concepts", "target"), "common_gen"):
        prompt = _user(INSTRUCTION_COMMONGEN.format(concepts=", ".join(r["concepts"])))
        if kind == "sft":
            out.append({"messages": prompt + [{"role": "assistant", "content": r["target"]}]})
            continue
        if r["concept_set_idx"] not in by_set:
            by_set[r["concept_set_idx"]] = {"messages": prompt, "ground_truth": list(r["concepts"]),
                                            "verifier": "concept_coverage", "reference": []}
            out.append(by_set[r["concept_set_idx"]])
        if r["target"]:
            by_set[r["concept_set_idx"]]["reference"].append(r["target"])
    return out


def cnn_dailymail_rows(rows: list[dict], kind: str = "rlvr") -> list[dict]:
    """CNN/DailyMail articles → "Summarize: article" with the highlights as ``rouge`` reference (RL)
    or as the answer (SFT)."""
    out = []
    for r in _need(rows, ("article", "highlights"), "cnn_dailymail"):
        prompt = _user("Summarize: " + r["article"].strip())
        if kind == "sft":
            out.append({"messages": prompt + [{"role": "assistant", "content": r["highlights"].strip()}]})
        else:
            out.append({"messages": prompt, "ground_truth": r["highlights"].strip(), "verifier": "rouge"})
    return out


def imdb_rows(rows: list[dict], kind: str = "rlvr", prefix_words: int = 48) -> list[dict]:
    """IMDB reviews → bare prompts of their first ``prefix_words`` words (RL, rewarded by a sentiment
    classifier; ``label`` kept) or prompt-completion rows continuing them (SFT). HTML line breaks
    are removed; reviews no longer than the prefix are skipped for SFT (nothing to continue)."""
    out = []
    for r in _need(rows, ("text", "label"), "imdb"):
        words = re.sub(r"<br\s*/?>", " ", r["text"]).split()
        prefix = " ".join(words[:prefix_words])
        if kind == "sft":
            if len(words) > prefix_words:
                out.append({"prompt": prefix, "completion": " " + " ".join(words[prefix_words:])})
        else:
            out.append({"prompt": prefix, "label": int(r["label"])})
    return out


MAPPERS = {"common_gen": common_gen_rows, "cnn_dailymail": cnn_dailymail_rows, "imdb": imdb_rows}


def load_grue(name: str, split: str = "train", file: str | None = None) -> list[dict]:
    """``name`` = ``<dataset>_<rlvr|sft>``: the dataset's rows (hub, or ``file`` in its schema) mapped."""
    from posttrain.data.sources import load_source

    dataset, _, kind = name.rpartition("_")
    if dataset not in MAPPERS or kind not in KINDS:
        known = ", ".join(f"grue:{d}_{k}" for d in MAPPERS for k in KINDS)
        raise DataError(f"unknown GRUE source grue:{name}; known: {known}")
    if file is not None:
        rows = load_source(file)
    else:
        hub, config = GRUE_HUB[dataset]
        rows = load_source(hub, split=split, **({"config": config} if config else {}))
    return MAPPERS[dataset](rows, kind)
