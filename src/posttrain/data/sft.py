"""``messages`` or prompt-completion rows → tokenised, cached SFT examples, and their batches (packed
padding-free or padded), as ``posttrain sft`` and the merging experiments train on them."""

from __future__ import annotations

from posttrain.data.cache import cached_tokenize
from posttrain.data.formats import validate_rows
from posttrain.data.packing import collate_packed, collate_padded, pack_sequences
from posttrain.data.seq2seq import collate_seq2seq, encode_seq2seq_sft
from posttrain.data.tokenize import encode_conversation, encode_prompt_completion


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, source: str,
                 seq2seq: bool = False) -> tuple[list[dict], int]:
    """Validated, tokenised examples (cached); rows left with no trained token are dropped and counted.
    ``seq2seq``: encoder input and decoder labels of an encoder-decoder (``data/seq2seq.py``)."""
    rows = validate_rows(rows, "sft", source)
    settings = {"kind": "sft", "max_length": max_length, **({"seq2seq": 1} if seq2seq else {})}

    def encode(rs):
        if seq2seq:
            return [encode_seq2seq_sft(tokenizer, r, max_length) for r in rs]
        return [encode_conversation(tokenizer, r["messages"], max_length=max_length) if "messages" in r else
                encode_prompt_completion(tokenizer, r["prompt"], r["completion"], max_length=max_length) for r in rs]

    examples, _hit = cached_tokenize(rows, tokenizer, settings, encode)
    kept = [e for e in examples if any(label != -100 for label in e["labels"][1:])]
    return kept, len(examples) - len(kept)


class SFTBatches:
    """Units are packed rows (or single conversations when packing is off). ``decoder_start_id``
    (an encoder-decoder's, never packed): padded encoder-decoder batches (``data/seq2seq.py``)."""

    def __init__(self, examples: list[dict], pad_id: int, max_length: int, packing: bool,
                 decoder_start_id: int | None = None):
        self.examples, self.pad_id, self.max_length, self.packing = examples, pad_id, max_length, packing
        self.decoder_start_id = decoder_start_id
        self.rows = pack_sequences(examples, max_length) if packing else [[i] for i in range(len(examples))]

    def __len__(self):
        return len(self.rows)

    def __call__(self, unit_indices: list[int]) -> dict:
        if self.decoder_start_id is not None:
            return collate_seq2seq([self.examples[self.rows[u][0]] for u in unit_indices], self.pad_id,
                                   self.decoder_start_id)
        if self.packing:
            return collate_packed(self.examples, [self.rows[u] for u in unit_indices], self.pad_id)
        return collate_padded([self.examples[self.rows[u][0]] for u in unit_indices], self.pad_id)
