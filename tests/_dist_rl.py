"""Run by tests/test_rl_distributed.py, in-process (1 process) or under ``accelerate launch``
(N processes): an RL run that records, per process, every step's sampled completions and
rewards and the first update's gradients (policy and value model), into ``<record>/rank<r>.pt``."""

import json
import os
import sys
from pathlib import Path

import torch


def run_recorded(cls_name: str, overrides: dict, record_dir: str) -> None:
    from posttrain.config import load_config
    from posttrain.train.engine import Engine
    from posttrain.train.rl import config as rl_configs, trainer

    rollouts, scores, grads = [], [], {}
    score, accumulate = trainer.score, Engine.accumulate_gradients

    def recorded_score(reward, rows, rollout):
        totals, sums = score(reward, rows, rollout)
        rollouts.append([ids[m.bool()].tolist() for ids, m in zip(rollout.completion_ids, rollout.completion_mask)])
        scores.append(totals.tolist())
        return totals, sums

    def recorded_accumulate(self, *args, **kwargs):
        out = accumulate(self, *args, **kwargs)
        if not grads:  # the first update's gradients, after DDP's all-reduce, before clipping
            for t in self.trainables:
                for name, p in self.unwrapped(t.model).named_parameters():
                    if p.grad is not None:
                        grads[f"{t.name}.{name}"] = p.grad.detach().clone()
        return out

    trainer.score, Engine.accumulate_gradients = recorded_score, recorded_accumulate
    try:
        config = load_config(getattr(rl_configs, cls_name), overrides=[
            f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()])
        trainer.run_rl(config)
    finally:
        trainer.score, Engine.accumulate_gradients = score, accumulate
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"rollouts": rollouts, "scores": scores, "grads": grads}, Path(record_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    run_recorded(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
