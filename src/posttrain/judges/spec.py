"""Judge specs: one string names a judge, on the command line and in configs.

- ``local:MODEL``: :class:`~posttrain.judges.local.LocalJudge` on any model spec
  (``local:smollm2-135m-instruct``, ``local:runs/sft/model``);
- ``http://HOST:PORT/v1@MODEL``: :class:`~posttrain.judges.remote.HTTPJudge`, an OpenAI-compatible
  server (``vllm serve``) and the model it serves; ``https://api.openai.com/v1@gpt-4o-mini`` over TLS
  (key from ``$OPENAI_API_KEY`` or ``api_key_env``).

The model name is what follows the last ``@`` (model names hold no ``@``; URLs may).
Anything else is not a judge spec: ``eval --judge`` reads it as a reward model.
"""

from __future__ import annotations

from posttrain.config import ConfigError

__all__ = ["check_judge", "is_judge_spec", "parse_judge_spec", "load_judge"]

EXAMPLES = "local:MODEL or http://HOST:PORT/v1@MODEL"


def is_judge_spec(spec: str | None) -> bool:
    return isinstance(spec, str) and spec.startswith(("local:", "http://", "https://"))


def parse_judge_spec(spec: str) -> tuple[str, dict]:
    """``("local", {"model": ...})`` or ``("http", {"base_url": ..., "model": ...})``; a
    :class:`ConfigError` for anything else (checked before any model loads or request goes out)."""
    if spec.startswith("local:"):
        model = spec[len("local:"):].strip()
        if not model:
            raise ConfigError(f"judge {spec!r}: name the model after local: (e.g. local:smollm2-135m-instruct)")
        return "local", {"model": model}
    if spec.startswith(("http://", "https://")):
        base_url, at, model = spec.rpartition("@")
        if not at or not model.strip():
            raise ConfigError(f"judge {spec!r}: name the served model after the URL, as URL@MODEL "
                              f"(e.g. http://localhost:8000/v1@Qwen/Qwen2.5-7B-Instruct)")
        if base_url.split("://", 1)[1].strip("/") == "":
            raise ConfigError(f"judge {spec!r}: the URL has no host")
        return "http", {"base_url": base_url, "model": model.strip()}
    raise ConfigError(f"unknown judge {spec!r}; write {EXAMPLES}")


def check_judge(spec: str, score_mode: str = "generate") -> tuple[str, dict]:
    """:func:`parse_judge_spec`, and the options checked against the kind of judge."""
    kind, parts = parse_judge_spec(spec)
    if score_mode not in ("generate", "expected"):
        raise ConfigError(f"judge score mode {score_mode!r}: use generate or expected")
    if score_mode == "expected" and kind != "local":
        raise ConfigError(f"judge {spec!r}: the expected (probability-weighted) score is implemented for local "
                          f"judges only; use the generated score with an HTTP judge")
    return kind, parts


def load_judge(spec: str, *, loaded_models: dict | None = None, batch_size: int = 8, max_new_tokens: int = 128,
               api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 3,
               cache_dir=None, workers: int = 4, score_mode: str = "generate"):
    """The judge a spec names. ``loaded_models`` maps model specs to already loaded
    ``(model, tokenizer)`` pairs, so a local judge on a model in use is not loaded twice.
    ``score_mode`` (local judges): ``generate`` (parse a generated rating) or ``expected``
    (probability-weighted rating, :class:`~posttrain.judges.local.LocalJudge`)."""
    kind, parts = check_judge(spec, score_mode)
    if kind == "local":
        from posttrain.judges.local import LocalJudge

        model = (loaded_models or {}).get(parts["model"], parts["model"])
        return LocalJudge(model, batch_size=batch_size, max_new_tokens=max_new_tokens, score_mode=score_mode,
                          spec=spec)
    from posttrain.judges.remote import HTTPJudge

    return HTTPJudge(parts["base_url"], parts["model"], api_key_env=api_key_env, timeout=timeout,
                     max_retries=max_retries, cache_dir=cache_dir, workers=workers)
