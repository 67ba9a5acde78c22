"""An LM judge behind an OpenAI-compatible chat-completions API (OpenAI, ``vllm serve``, …).

    judge = HTTPJudge("http://localhost:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    judge.score([{"role": "user", "content": "2+2?"}], "4")   # JudgeScore(score=9.0, raw="... Rating: 9")

Requests go to ``{base_url}/chat/completions`` with the standard library's ``urllib`` (no extra
dependency). The API key is read from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY``; a local vLLM needs none) and never appears in errors or logs.

Failures: a timeout, a connection error, a 5xx or a 429 (rate limit) is retried up to
``max_retries`` times with exponential backoff (``backoff * 2**attempt`` seconds); any other 4xx is
the caller's mistake (bad model name, bad key) and fails at once; a reply that is not the API's
JSON fails at once with the start of what came back. Each is a :class:`JudgeError`.

Cache: every reply is stored under ``cache_dir`` in a file named by the SHA-256 of (base URL,
model, messages, sampling settings), so a rerun of the same judgements sends no request. Sampling
defaults to greedy (temperature 0), which is what makes a cached reply a fair stand-in.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from posttrain.judges.base import JudgeError, JudgeScore, swap_averaged
from posttrain.judges.templates import pairwise_messages, parse_choice, parse_rubric_score, rubric_messages

__all__ = ["HTTPJudge", "default_cache_dir"]

RETRIED_STATUS = {429, 500, 502, 503, 504}


def default_cache_dir() -> Path:
    from posttrain.models.embedded import posttrain_home

    return posttrain_home() / "judge_cache"


class HTTPJudge:
    """Rubric scores and pairwise verdicts from a chat-completions server (module docstring)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, temperature: float = 0.0, max_tokens: int = 512,
                 cache_dir: str | Path | None = None, workers: int = 4, low: int = 1, high: int = 10):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.spec = f"{self.base_url}@{model}"
        self.api_key_env = api_key_env
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.sampling = {"temperature": temperature, "max_tokens": max_tokens}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.workers, self.low, self.high = workers, low, high
        self.requests_sent = 0   # requests that went over the network (cache misses, retries included)

    # -- one chat completion, cached ---------------------------------------------------------

    def cache_key(self, messages: list[dict]) -> str:
        blob = json.dumps({"base_url": self.base_url, "model": self.model, "messages": messages,
                           "sampling": self.sampling}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def chat(self, messages: list[dict]) -> str:
        """The assistant's reply text to ``messages`` (from the cache when asked before)."""
        key = self.cache_key(messages)
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.exists():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["reply"]
            except (json.JSONDecodeError, KeyError):
                pass  # a torn cache file: ask again and rewrite it
        reply = self._post(messages)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{id(messages)}.tmp")  # atomic: threads may race on one key
        tmp.write_text(json.dumps({"reply": reply, "model": self.model}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return reply

    def _post(self, messages: list[dict]) -> str:
        url = f"{self.base_url}/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, **self.sampling}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests_sent += 1
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code not in RETRIED_STATUS:
                    raise JudgeError(f"judge {url} (model {self.model}) refused the request: HTTP {e.code} "
                                     f"{detail}") from None
                last = f"HTTP {e.code} {detail}"
                continue
            except (TimeoutError, socket.timeout):
                last = f"no reply within {self.timeout:g}s"
                continue
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    last = f"no reply within {self.timeout:g}s"
                else:
                    last = f"cannot connect ({e.reason})"
                continue
            except (ConnectionError, http.client.HTTPException) as e:
                last = f"connection failed ({type(e).__name__}: {e})"
                continue
            return self._reply_text(url, payload)
        raise JudgeError(f"judge {url} (model {self.model}): {last} after {self.max_retries + 1} tries")

    def _reply_text(self, url: str, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            start = payload[:200].decode("utf-8", "replace")
            raise JudgeError(f"judge {url} (model {self.model}) sent a malformed reply (expected chat-completions "
                             f"JSON with choices[0].message.content): {start!r}") from None
        if not isinstance(content, str):
            raise JudgeError(f"judge {url} (model {self.model}) sent a malformed reply: message content is "
                             f"{type(content).__name__}, not text")
        return content

    # -- the Judge interface -----------------------------------------------------------------

    def score(self, prompt_messages: list[dict], completion: str) -> JudgeScore:
        raw = self.chat(rubric_messages(prompt_messages, completion, self.low, self.high))
        value = parse_rubric_score(raw, self.low, self.high)
        return JudgeScore(float("nan") if value is None else value, raw)

    def score_many(self, prompts: list[list[dict]], completions: list[str]) -> list[JudgeScore]:
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(self.score, prompts, completions))

    def _prefers_first(self, prompt_messages: list[dict], first: str, second: str) -> float | None:
        choice = parse_choice(self.chat(pairwise_messages(prompt_messages, first, second)))
        return None if choice is None else float(choice == "A")

    def compare(self, prompt_messages: list[dict], a: str, b: str) -> float:
        return swap_averaged(lambda x, y: self._prefers_first(prompt_messages, x, y), a, b)

    def compare_many(self, prompts: list[list[dict]], a: list[str], b: list[str]) -> list[float]:
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(self.compare, prompts, a, b))
