"""OpenEnv environments through the adapter (``tools/openenv.py``): an OpenEnv server started in
this test process (uvicorn in a thread, loopback only), GRPO episodes that talk to it over
WebSocket sessions, its rewards in the episode reward, every session closed. Needs
``openenv-core`` (``pip install 'posttrain[openenv]'``); skipped without it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("openenv")

from pydantic import Field  # noqa: E402

from openenv.core.env_server import Environment, create_app  # noqa: E402
from openenv.core.env_server.types import Action, Observation, State  # noqa: E402

from test_tools import eos_model_dir  # noqa: E402,F401  (fixture)

SESSIONS = {"opened": 0, "steps": 0}


class ShoutAction(Action):
    message: str = Field(..., description="what the agent says")


class ShoutObservation(Observation):
    echoed: str = Field(default="", description="the message, upper-cased")


class Shout(Environment):
    """Echoes the agent's message upper-cased; 0.5 reward a step; done after two steps."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        self._state = State(step_count=0)

    def reset(self, **_):
        SESSIONS["opened"] += 1
        self._state = State(step_count=0)
        return ShoutObservation(echoed="SAY SOMETHING", reward=0.0)

    def step(self, action, **_):
        SESSIONS["steps"] += 1
        self._state.step_count += 1
        return ShoutObservation(echoed=action.message.upper() or "(NOTHING)", reward=0.5,
                                done=self._state.step_count >= 2)

    @property
    def state(self):
        return self._state


@pytest.fixture(scope="module")
def openenv_url():
    import uvicorn

    app = create_app(Shout, ShoutAction, ShoutObservation, max_concurrent_envs=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_openenv_episodes_map_text_to_actions_and_observations(openenv_url, tokenizer):
    from test_tools import ROW, Scripted, episodes

    _, out = episodes(Scripted(tokenizer, ["hello", "again"]), tokenizer, environment=f"openenv:{openenv_url}")
    assert out.end_reasons == ["done"] and out.turns.tolist() == [2]
    assert out.env_rewards.tolist() == [1.0]                       # 0.5 a step, two steps
    assert "HELLO" in out.transcripts[0] and out.texts == ["again"]
    prompt = tokenizer.decode(out.prompt_ids[0])
    assert ROW["messages"][0]["content"] + "\n\nSAY SOMETHING" in prompt   # the reset observation


def test_grpo_trains_through_an_openenv_server(openenv_url, eos_model_dir, tmp_path):
    from test_rl import read_metrics, rl_config

    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.trainer import run_rl

    before = dict(SESSIONS)
    config = rl_config(GRPOConfig, eos_model_dir, tmp_path / "run", environment=f"openenv:{openenv_url}",
                       max_new_tokens=8, max_episode_tokens=48, eval_data=[])
    run_rl(config)
    records = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert len(records) == 2 and records[0]["reward/environment"] > 0 and records[0]["episode/turns"] > 1
    assert SESSIONS["opened"] - before["opened"] == 2 * 2 * 4     # one session per episode: steps × prompts × k
    assert SESSIONS["steps"] > before["steps"]


def test_openenv_options_are_checked(openenv_url):
    from posttrain.tools import ToolError, environment_factory

    with pytest.raises(ToolError, match="give the server's URL"):
        environment_factory("openenv:localhost:8000")
    with pytest.raises(ToolError, match="not timeout"):
        environment_factory(f"openenv:{openenv_url}", options={"timeout": 3})
