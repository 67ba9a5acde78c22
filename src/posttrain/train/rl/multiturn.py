"""Multi-turn, tool-using rollouts: episodes of several model turns with tool results between
them, returned as one :class:`~posttrain.train.rl.rollout.Rollout` so every algorithm trains on
them unchanged (``docs/tools.md``).

An episode, for each of ``group_size`` samples of a prompt row:

1. ``env.reset(row)`` gives the conversation to start from; the tools' schemas are rendered into
   it (``tools/format.py``) and it is tokenised once: the episode's prompt.
2. Up to ``max_turns`` times: the rollout backend samples one turn (at most ``max_new_tokens``
   tokens, and never past ``max_episode_tokens`` for the whole episode) from the prompt plus
   everything so far; the sampled ids are appended as they came out of the sampler (mask 1, with
   their sampling log-probs). A turn that ends in EOS goes to ``env.step`` (all of a batch's
   episodes at once, through the bounded ``EnvironmentPool``); its observation's tokens — the
   template's separators, the tool results, the next generation prompt — are appended with mask
   0 (``ToolChat.continuation_ids``). The episode ends when the environment says done (for tools:
   a turn without a call, i.e. the answer), at ``max_turns``, at a token limit, or when the
   environment fails (raises, times out, returns junk: the reason is logged and counted).

**Token-in/token-out.** The ids trained on are exactly the sampled ids: no turn is decoded and
re-tokenised; text is decoded only to parse tool calls and to score. A sampled token carries
mask 1, every inserted token mask 0, so the policy loss, its aggregation (``grpo`` divides by
episodes, ``dapo`` by sampled tokens, ``dr_grpo`` by episodes × ``max_episode_tokens``) and the
sampler–trainer log-prob gap all count policy tokens only. Turn t of completion j of a prompt is
drawn from its own stream seeded by (prompt seed, j, t), so episodes do not depend on their batch
neighbours or on the process count, as single-turn rollouts.

Scoring: ``Rollout.texts`` holds each episode's *last* model turn (the final answer the
verifier reads); the environment's summed step rewards are added to the episode's reward
(``reward/environment``). KV caches are not kept across turns (each turn prefills its context
again): simple and exact, at the cost of recomputing the context on every turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from posttrain.tools import EnvironmentPool, EpisodeEnded, StepResult, ToolChat
from posttrain.tools.environment import valid_messages
from posttrain.train.rl.rollout import Rollout, row_seed

__all__ = ["EpisodeRollout", "MultiTurnRollout", "episode_metrics", "END_REASONS"]

# why an episode ended, besides a failing environment ("env_failure", with its reason logged)
END_REASONS = ("done", "max_turns", "turn_tokens", "episode_tokens", "env_failure")


@dataclass
class EpisodeRollout(Rollout):
    """A :class:`Rollout` of whole episodes (B = prompts × n, T = the longest episode after its
    prompt). ``completion_ids`` holds sampled *and* inserted tokens; ``completion_mask`` is 1 on
    sampled ones only. Extra fields:

        env_rewards: (B,) float, the environment's summed step rewards.
        turns: (B,) long, model turns taken.
        end_reasons: B strings, one of ``END_REASONS``.
        failures: B strings, why the environment failed ("" when it did not).
        transcripts: B decoded episodes (special tokens kept), for samples.
        counts: summed step ``info`` counts (tool_calls, parse_failures, tool_errors).
    """

    env_rewards: torch.Tensor = None
    turns: torch.Tensor = None
    end_reasons: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


@dataclass
class _Episode:
    row: dict
    seed: int | None
    env: object = None
    history: list[dict] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    last_turn: str = ""
    turns: int = 0
    reward: float = 0.0
    done: bool = False
    finished: bool = False
    reason: str = ""
    failure: str = ""


class MultiTurnRollout:
    """Episodes over any single-turn backend with per-row seeds (``HFRollout``; module docstring).
    ``make_environment()`` makes one environment per episode; ``tools`` are what it shows the model."""

    needs_rows = True   # generate() takes the dataset rows (the environments reset from them)

    def __init__(self, backend, tokenizer, make_environment, tools: list, pool: EnvironmentPool, max_turns: int,
                 max_episode_tokens: int):
        self.backend, self.tokenizer, self.make_environment = backend, tokenizer, make_environment
        self.chat = ToolChat(tokenizer, [t.schema for t in tools])
        self.pool, self.max_turns, self.max_episode_tokens = pool, max_turns, max_episode_tokens
        self.pad_id = tokenizer.pad_token_id
        self.counts: dict = {}   # step info counts of the episodes being generated
        # A template that does not render prefix-consistently is refused now, not at the first tool call.
        probe = self.chat.prompt_messages([{"role": "user", "content": "q"}]) + [{"role": "assistant", "content": "a"}]
        self.chat.continuation_ids(probe, self.chat.result_messages([("probe", "r")]))

    def update_weights(self, model):
        self.backend.update_weights(model)

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                 action_mask=None, seeds=None, rows=None) -> EpisodeRollout:
        if rows is None or len(rows) != len(prompt_ids):
            raise ValueError("multi-turn rollouts need the dataset rows, one per prompt (rows=…)")
        if action_mask is not None:
            raise NotImplementedError("NLPO's action mask is not supported with tools")
        start = time.perf_counter()
        episodes = [_Episode(row, None if seeds is None else row_seed(seeds[i], j))
                    for i, row in enumerate(rows) for j in range(n)]
        self.counts = {}
        self._reset(episodes)
        for turn in range(self.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            self._sample_turn(active, turn, max_new_tokens, temperature, top_p, top_k, greedy)
            stepping = [e for e in active if not e.done]
            results = self.pool.run([lambda e=e: e.env.step(e.last_turn) for e in stepping])
            for episode, result in zip(stepping, results):
                self._apply(episode, result, last_turn=turn == self.max_turns - 1)
        closing = [e.env.close for e in episodes if callable(getattr(e.env, "close", None))]
        self.pool.run(closing, check=lambda value: value)   # sessions end with their episode (failures logged)
        return self._rollout(episodes, rows, n, time.perf_counter() - start)

    # --- the steps of an episode

    def _reset(self, episodes: list[_Episode]):
        def reset(e):
            e.env = self.make_environment()
            return e.env.reset(e.row)

        def check(messages):
            if isinstance(messages, list) and messages and valid_messages(messages):
                return messages
            return EpisodeEnded(f"reset returned junk: a {type(messages).__name__}, not a list of messages")

        for episode, result in zip(episodes, self.pool.run([lambda e=e: reset(e) for e in episodes], check)):
            if isinstance(result, EpisodeEnded):   # no turn is sampled; the row's own prompt stands in
                episode.prompt = self.chat.encode_prompt(self.chat.prompt_messages(episode.row["messages"]))
                self._end(episode, "env_failure", finished=True, failure=result.reason)
            else:
                episode.history = self.chat.prompt_messages(result)
                episode.prompt = self.chat.encode_prompt(episode.history)

    def _sample_turn(self, active, turn, max_new_tokens, temperature, top_p, top_k, greedy):
        budgets = [min(max_new_tokens, self.max_episode_tokens - len(e.ids)) for e in active]
        seeds = None if greedy or active[0].seed is None else [row_seed(e.seed, turn + 1) for e in active]
        out = self.backend.generate([e.prompt + e.ids for e in active], n=1, max_new_tokens=max(budgets),
                                    temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy, seeds=seeds)
        for k, (episode, budget) in enumerate(zip(active, budgets)):
            sampled = out.completion_mask[k].bool()
            ids = out.completion_ids[k][sampled].tolist()[:budget]
            finished = bool(out.finished[k]) and len(ids) == int(sampled.sum())
            episode.ids += ids
            episode.mask += [1.0] * len(ids)
            episode.logps += out.sampling_logps[k][sampled].tolist()[:budget]
            episode.turns += 1
            episode.last_turn = self.tokenizer.decode(ids, skip_special_tokens=True)
            episode.history.append({"role": "assistant", "content": episode.last_turn})
            if not finished:
                self._end(episode, "turn_tokens" if budget == max_new_tokens else "episode_tokens", finished=False)

    def _apply(self, episode: _Episode, result, last_turn: bool):
        if isinstance(result, EpisodeEnded):
            return self._end(episode, "env_failure", finished=True, failure=result.reason)
        assert isinstance(result, StepResult)
        episode.reward += result.reward
        for key, value in result.info.items():
            if isinstance(value, (int, float)):
                self.counts[key] = self.counts.get(key, 0.0) + float(value)
        if result.done:
            return self._end(episode, "done", finished=True)
        if last_turn:   # the model asked for more, but it has no turn left to read the answer
            return self._end(episode, "max_turns", finished=False)
        observation = result.observation
        if observation and isinstance(observation[0], tuple):   # (tool name, text) results
            observation = self.chat.result_messages(observation)
        inserted = self.chat.continuation_ids(episode.history, observation)
        if len(episode.ids) + len(inserted) >= self.max_episode_tokens:
            return self._end(episode, "episode_tokens", finished=False)
        episode.history += observation
        episode.ids += inserted
        episode.mask += [0.0] * len(inserted)
        self.counts["inserted_tokens"] = self.counts.get("inserted_tokens", 0.0) + len(inserted)
        episode.logps += [0.0] * len(inserted)

    @staticmethod
    def _end(episode: _Episode, reason: str, finished: bool, failure: str = ""):
        episode.done, episode.reason, episode.finished, episode.failure = True, reason, finished, failure

    def _rollout(self, episodes: list[_Episode], rows: list[dict], n: int, seconds: float) -> EpisodeRollout:
        B, T = len(episodes), max(1, max(len(e.ids) for e in episodes))
        completion = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask, logps = torch.zeros((B, T)), torch.zeros((B, T))
        for i, e in enumerate(episodes):
            if e.ids:
                completion[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
                mask[i, :len(e.ids)] = torch.tensor(e.mask)
                logps[i, :len(e.ids)] = torch.tensor(e.logps)
        counts, self.counts = dict(self.counts), {}
        return EpisodeRollout(
            prompt_ids=[e.prompt for e in episodes], prompt_index=torch.arange(len(rows)).repeat_interleave(n),
            completion_ids=completion, completion_mask=mask, sampling_logps=logps,
            texts=[e.last_turn for e in episodes], finished=torch.tensor([e.finished for e in episodes]),
            group_size=n, pad_id=self.pad_id, seconds=seconds,
            env_rewards=torch.tensor([e.reward for e in episodes], dtype=torch.float32),
            turns=torch.tensor([e.turns for e in episodes]), end_reasons=[e.reason for e in episodes],
            failures=[e.failure for e in episodes],
            transcripts=[self.tokenizer.decode(e.ids, skip_special_tokens=False) for e in episodes], counts=counts)


def episode_metrics(engine, rollout: EpisodeRollout) -> dict:
    """The step's episode record over all processes: mean turns, tool-token share, per-episode
    rates of tool calls / parse failures / tool errors, and the share of each end reason."""
    sums = {"episodes": float(len(rollout.end_reasons)), "turns": float(rollout.turns.sum()),
            "inserted": float(rollout.counts.get("inserted_tokens", 0.0)),
            "env_reward": float(rollout.env_rewards.sum())}
    for key in ("tool_calls", "parse_failures", "tool_errors"):
        sums[key] = float(rollout.counts.get(key, 0.0))
    for reason in END_REASONS:
        sums[f"end/{reason}"] = float(sum(r == reason for r in rollout.end_reasons))
    names = list(sums)
    totals = dict(zip(names, engine.all_reduce_sum([sums[k] for k in names])))
    n = max(totals["episodes"], 1.0)
    record = {"episode/turns": totals["turns"] / n, "episode/inserted_tokens": totals["inserted"] / n,
              "episode/env_reward": totals["env_reward"] / n}
    for key in ("tool_calls", "parse_failures", "tool_errors"):
        record[f"episode/{key}"] = totals[key] / n
    for reason in END_REASONS:
        record[f"episode/end_{reason}"] = totals[f"end/{reason}"] / n
    return record
