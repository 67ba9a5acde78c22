"""OpenEnv environments as posttrain environments: ``environment=openenv:URL``.

OpenEnv (PyPI ``openenv-core``, ``pip install 'posttrain[openenv]'``) serves Gymnasium-style
environments over HTTP/WebSocket: ``reset() -> observation``, ``step(action) -> observation,
reward, done``, with typed actions and observations. :class:`OpenEnvEnvironment` opens one
WebSocket session per episode through OpenEnv's ``GenericEnvClient`` (plain dicts, so the
environment's own package need not be installed) and maps text to and from it:

- the model's turn is sent as the action ``{action_field: turn}`` (``action_field``, default
  ``message``: the field of the environment's Action class that takes text);
- an observation becomes one ``user`` turn: its ``observation_field`` if given, else its only
  text field, else the whole observation as JSON (``metadata`` left out); the reset
  observation is added to the row's last user turn;
- the step's reward is the environment reward (``reward/environment``); ``done`` ends the
  episode. The session is closed when the episode ends, however it ends (``close``).

Options come from ``environment_options``, e.g.
``posttrain grpo environment=openenv:http://localhost:8000 'environment_options={action_field: code}'``.
"""

from __future__ import annotations

import json

from posttrain.tools.environment import StepResult

__all__ = ["OpenEnvEnvironment", "observation_text", "PREFIX"]

PREFIX = "openenv:"


def observation_text(observation: dict, field: str | None = None) -> str:
    """The text the model reads for an OpenEnv observation (module docstring)."""
    if field:
        if field not in observation:
            raise KeyError(f"the observation has no field {field!r} (it has {', '.join(observation)})")
        return str(observation[field])
    body = {k: v for k, v in observation.items() if k != "metadata"}
    texts = [v for v in body.values() if isinstance(v, str)]
    return texts[0] if len(texts) == 1 else json.dumps(body, ensure_ascii=False)


class OpenEnvEnvironment:
    """One OpenEnv session per episode (module docstring)."""

    tools: list = []

    def __init__(self, base_url: str, action_field: str = "message", observation_field: str | None = None):
        from openenv.core.generic_client import GenericEnvClient

        self.base_url, self.action_field, self.observation_field = base_url, action_field, observation_field
        client = GenericEnvClient(base_url=base_url)
        # openenv-core 0.3 made the client async and added ``.sync()`` for a blocking wrapper with
        # the same methods; 0.2's client is blocking already (the lock pins 0.2.1: 0.3 pulls gradio,
        # which caps pillow below 13).
        self.client = client.sync() if hasattr(client, "sync") else client

    def reset(self, row: dict) -> list[dict]:
        self.client.connect()
        text = observation_text(self.client.reset().observation, self.observation_field)
        messages = [dict(m) for m in row["messages"]]
        if text and messages and messages[-1]["role"] == "user":
            messages[-1]["content"] += "\n\n" + text
        elif text:
            messages.append({"role": "user", "content": text})
        return messages

    def step(self, turn: str) -> StepResult:
        result = self.client.step({self.action_field: turn})
        text = observation_text(result.observation, self.observation_field)
        return StepResult(observation=None if result.done else text, reward=float(result.reward or 0.0),
                          done=bool(result.done))

    def close(self):
        self.client.close()
