"""Batched generation and continuation log-likelihoods with Hugging Face ``generate``.

A generator turns chat prompts (message lists) into completions (strings). The runner only needs
two methods, so tests and ``--predictions`` files can stand in for a model:

- ``generate(prompts, max_new_tokens, temperature, top_p, num_samples, seed) -> list[list[str]]``
  (``num_samples`` completions per prompt);
- ``loglikelihood(requests) -> list[float]``: for ``(prompt_messages, continuation)`` pairs, the
  summed log-probability of the continuation's tokens after the rendered generation prompt
  (multiple-choice tasks).

:class:`HFGenerator` does it with a loaded causal LM: prompts rendered with the tokenizer's chat
template (generation prompt appended), left padding, sorted by length so a batch holds prompts
of similar size, greedy when ``temperature == 0`` and sampled otherwise, stopping at EOS
(the tokenizer's and the model's ``generation_config`` ones). An encoder-decoder (T5, BART) takes
the prompt as its encoder input (``data/seq2seq.encoder_prompt_ids``: the chat template when the
tokenizer has one, else the plain text) and generates the completion with its decoder. Sampling is seeded per call with
``torch.manual_seed(seed)``: the same call gives the same completions, but a different batch
size regroups prompts and so changes sampled completions (greedy ones do not change, up to
floating-point effects of padding).

:class:`PredictionsGenerator` replays saved completions (``--predictions FILE``: jsonl rows
``{"task": ..., "id": ..., "completion": str}`` or ``"completions": [str, ...]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain.models import seq2seq
from posttrain.models.adapters import reads_soft_prompt
from posttrain.models.layout import distinct_prompts, gather_logps, shared_prefix_logits

__all__ = ["HFGenerator", "PredictionsGenerator", "render_prompts"]


def render_prompts(tokenizer, prompts: list[list[dict]]) -> list[str]:
    """Chat-template text of each prompt, ending with the generation prompt."""
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


class HFGenerator:
    """Batched HF generation (module docstring). ``batch_size`` counts prompts; with
    ``num_samples > 1`` a batch produces ``batch_size * num_samples`` sequences."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_prompt_tokens: int = 2048):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos_token_ids = sorted(e for e in eos if e is not None)
        self.calls = 0  # generate() calls, for tests and progress
        self.seq2seq = seq2seq.is_encoder_decoder(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                             truncation=True, max_length=self.max_prompt_tokens)
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, num_samples: int = 1, seed: int = 0) -> list[list[str]]:
        self.calls += 1
        texts = self._encoder_prompts(prompts) if self.seq2seq else render_prompts(self.tokenizer, prompts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[str]] = [[] for _ in texts]
        torch.manual_seed(seed)
        sample = temperature > 0
        if num_samples > 1 and not sample:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples would all be equal)")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.seq2seq:   # generate returns [start] + completion
                enc, prompt_width = seq2seq.encoder_inputs([texts[i] for i in idx], self.tokenizer.pad_token_id,
                                                           self.device), 1
            else:
                enc = self._encode([texts[i] for i in idx])
                prompt_width = enc["input_ids"].shape[1]
            kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if sample else \
                dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            seqs_NT = self.model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
                                          eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
                                          **kwargs)
            new_NT = seqs_NT[:, prompt_width:]  # N = len(idx) * num_samples, grouped by prompt
            decoded = self.tokenizer.batch_decode(new_NT, skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [d.strip() for d in decoded[j * num_samples:(j + 1) * num_samples]]
        return out

    def episodes(self, prompts: list[list[dict]], tools, max_turns: int, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, num_samples: int = 1, seed: int = 0) -> list[list[dict]]:
        """Tool-use episodes, as RL runs them (``train/rl/multiturn.py``, ``docs/tools.md``):
        per prompt, ``num_samples`` dicts ``{"final": last model turn, "episode": the whole
        episode, "end": why it ended}``. ``max_new_tokens`` is per turn; an episode has room for
        ``max_turns`` turns and as many tool results of the same size. Sampling is seeded per
        prompt (``seed`` + its index), so a batch's neighbours do not change it."""
        from posttrain.tools import EnvironmentPool, environment_factory
        from posttrain.train.rl.multiturn import MultiTurnRollout
        from posttrain.train.rl.rollout import HFRollout

        make_environment, resolved = environment_factory(tools=list(tools))
        backend = HFRollout(self.model, self.tokenizer, batch_size=self.batch_size * num_samples)
        rollout = MultiTurnRollout(backend, self.tokenizer, make_environment, resolved, EnvironmentPool(),
                                   max_turns, 2 * max_turns * max_new_tokens)
        greedy = temperature == 0
        if num_samples > 1 and greedy:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples would all be equal)")
        rows = [{"messages": p, "prompt_ids": []} for p in prompts]
        out = rollout.generate([[] for _ in rows], num_samples, max_new_tokens, temperature=temperature or 1.0,
                               top_p=top_p, greedy=greedy, rows=rows,
                               seeds=None if greedy else [seed + i for i in range(len(rows))])
        return [[{"final": out.texts[k].strip(), "episode": out.transcripts[k], "end": out.end_reasons[k]}
                 for k in range(i * num_samples, (i + 1) * num_samples)] for i in range(len(rows))]

    def _encoder_prompts(self, prompts: list[list[dict]]) -> list[list[int]]:
        """An encoder-decoder's prompts as encoder token ids (``data/seq2seq.encoder_prompt_ids``)."""
        from posttrain.data.seq2seq import encoder_prompt_ids

        return [encoder_prompt_ids(self.tokenizer, p)[:self.max_prompt_tokens] for p in prompts]

    @torch.inference_mode()
    def loglikelihood(self, requests: list[tuple[list[dict], str]]) -> list[float]:
        """Summed log p(continuation | rendered prompt) per request. Requests that share a prompt
        (a multiple-choice item's choices) run it once: its KV cache is copied to each of its
        continuations, so a four-choice item costs one prompt pass and four short ones, not four
        full passes. Equal to scoring ``prompt + continuation`` in one forward, up to float
        rounding. An encoder-decoder scores the continuation as its decoder's output; a model with
        a soft prompt scores whole rows (:meth:`_right_padded_loglikelihood`)."""
        tok = self.tokenizer
        if self.seq2seq:
            return self._seq2seq_loglikelihood(requests)
        texts = render_prompts(tok, [r[0] for r in requests])
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        continuations = [tok(c, add_special_tokens=False)["input_ids"] for _, c in requests]
        if reads_soft_prompt(self.model):
            return self._right_padded_loglikelihood(prompts, continuations)
        scores = [0.0] * len(requests)
        unique, owner = distinct_prompts(prompts)
        batches: dict[int, list[int]] = {}   # batch_size prompts at a time, with all their choices
        for r, u in enumerate(owner.tolist()):
            if continuations[r]:
                batches.setdefault(u // self.batch_size, []).append(r)
        for k, rows in batches.items():
            b = k * self.batch_size
            width = max(len(continuations[r]) for r in rows)
            ids_RC = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            mask_RC = torch.zeros((len(rows), width))
            for i, r in enumerate(rows):
                ids_RC[i, :len(continuations[r])], mask_RC[i, :len(continuations[r])] = \
                    torch.tensor(continuations[r]), 1.0
            ids_RC = ids_RC.to(self.device)
            logits_RCV = shared_prefix_logits(self.model, unique[b:b + self.batch_size], owner[rows] - b, ids_RC,
                                              tok.pad_token_id)
            sums = (gather_logps(logits_RCV.float(), ids_RC).cpu() * mask_RC).sum(-1).tolist()
            for r, value in zip(rows, sums):
                scores[r] = value
        return scores

    def _right_padded_loglikelihood(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[float]:
        """One forward per batch of whole ``prompt + continuation`` rows, right padded: for a model
        that puts a soft prompt (``adapter=prompt|attempt``) before every row and so recomputes it
        from the row, where a cached prompt cannot be continued and left padding would move the
        real tokens away from the soft prompt."""
        seqs = [p + c for p, c in zip(prompts, continuations)]
        scores: list[float] = []
        for b in range(0, len(seqs), self.batch_size):
            chunk = seqs[b:b + self.batch_size]
            ids_BT = torch.full((len(chunk), max(map(len, chunk))), self.tokenizer.pad_token_id, dtype=torch.long)
            mask_BT = torch.zeros_like(ids_BT)
            for r, seq in enumerate(chunk):
                ids_BT[r, :len(seq)], mask_BT[r, :len(seq)] = torch.tensor(seq), 1
            ids_BT, mask_BT = ids_BT.to(self.device), mask_BT.to(self.device)
            # token t is predicted at position t - 1
            token_logps_BT = gather_logps(self.model(input_ids=ids_BT, attention_mask=mask_BT).logits[:, :-1].float(),
                                          ids_BT[:, 1:])
            for r in range(len(chunk)):
                start, end = len(prompts[b + r]), len(chunk[r])
                scores.append(token_logps_BT[r, start - 1:end - 1].sum().item())
        return scores

    def _seq2seq_loglikelihood(self, requests: list[tuple[list[dict], str]]) -> list[float]:
        prompts = self._encoder_prompts([r[0] for r in requests])
        continuations = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in requests]
        scores: list[float] = []
        for b in range(0, len(requests), self.batch_size):
            chunk = continuations[b:b + self.batch_size]
            width = max(1, max(map(len, chunk)))
            ids_BT = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask_BT = torch.zeros((len(chunk), width))
            for r, c in enumerate(chunk):
                ids_BT[r, :len(c)], mask_BT[r, :len(c)] = torch.tensor(c, dtype=torch.long), 1.0
            logps_BT, _ = seq2seq.decoder_token_logps(self.model, prompts[b:b + self.batch_size], ids_BT.to(self.device),
                                                      self.tokenizer.pad_token_id, mask_BT.to(self.device))
            scores += logps_BT.sum(-1).tolist()
        return scores


class PredictionsGenerator:
    """Replays completions from a jsonl file (``task``, ``id``, ``completion``/``completions``).
    A prompt whose completion is missing is an error naming the task and id."""

    def __init__(self, path: str | Path):
        from posttrain.data.formats import DataError

        path = Path(path)
        if not path.exists():
            raise DataError(f"predictions file {path} does not exist")
        self.table: dict[tuple[str, str], list[str]] = {}
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key = (str(row.get("task", "")), str(row["id"]))
                    completions = row["completions"] if "completions" in row else [row["completion"]]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{path}, line {line_no}: need a JSON object with 'id' and 'completion' "
                                    f"(or 'completions') and optionally 'task' ({type(e).__name__}: {e})") from None
                if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
                    bad = completions if not isinstance(completions, list) else \
                        next(c for c in completions if not isinstance(c, str))
                    raise DataError(f"{path}, line {line_no}: each completion must be a string (the model's "
                                    f"text), got {type(bad).__name__} {str(bad)[:80]}. Write the text itself, "
                                    f"e.g. {{\"id\": ..., \"completion\": \"...\"}}")
                self.table[key] = list(completions)
        self.calls = 0

    def lookup(self, task: str, sample_id: str, num_samples: int) -> list[str]:
        from posttrain.data.formats import DataError

        found = self.table.get((task, sample_id)) or self.table.get(("", sample_id))
        if found is None:
            raise DataError(f"predictions file has no completion for task {task!r}, id {sample_id!r}")
        return (found * num_samples)[:num_samples] if len(found) < num_samples else found[:num_samples]
