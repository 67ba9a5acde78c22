"""Does PPO with a reward-model reward raise that reward while the KL stays bounded? (an
experiment, not a test)

Runs ``posttrain ppo`` on SmolLM2-135M-Instruct (CPU) with one reward component, a Bradley–Terry
reward model trained by ``posttrain reward`` (``{"reward_model": RM}``), the per-token KL penalty
folded into the reward (k1, as TÜLU 3 / TRL's PPOTrainer), and the value model initialised from
that reward model (TÜLU 3's choice). Prompts: built-in single-digit arithmetic and IFEval-style
prompts, the kinds the reward model was trained on. Prints the reward model's mean score over the
first and last thirds of the run, the KL per step (max and last), and the verifiable accuracy of
the sampled completions, so a rising RM score that verifiers do not confirm shows up. Then the
less noisy check: greedy completions of the base and the trained policy on held-out prompts
(``--heldout`` per source, test splits), scored by the same reward model, compared pairwise
(mean difference with a 95 % interval) — the per-step training means above are single samples.

    PYTHONPATH=src .venv/bin/python bench/ppo_reward_model.py --rm runs/rm/model          # ~15 min on 2 cores
    PYTHONPATH=src .venv/bin/python bench/ppo_reward_model.py --rm runs/rm/model --steps 20 --beta 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from posttrain.config import load_config  # noqa: E402
from posttrain.train.rl.config import PPOConfig  # noqa: E402
from posttrain.train.rl.trainer import run_rl  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rm", required=True, help="reward-model folder written by `posttrain reward` (…/model)")
parser.add_argument("--out", default="runs/ppo-rm")
parser.add_argument("--steps", type=int, default=24)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--lr", type=float, default=2e-6)
parser.add_argument("--prompts", type=int, default=8)
parser.add_argument("--max-new-tokens", type=int, default=48)
parser.add_argument("--beta", type=float, default=0.05)
parser.add_argument("--kl-target", type=float, default=0.0, help="adaptive KL target (0 = fixed beta)")
parser.add_argument("--value-model", default="rm", help="rm (the reward model, as TÜLU 3) or policy")
parser.add_argument("--heldout", type=int, default=24, help="held-out prompts per source for the before/after check")
args = parser.parse_args()

overrides = {
    "out": args.out, "seed": args.seed, "max_steps": args.steps, "learning_rate": args.lr,
    "prompts_per_step": args.prompts, "group_size": 1, "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
    "beta": args.beta, "kl_target": args.kl_target, "batch_size": 8, "eval_steps": 0, "save_steps": 0,
    "ppo_epochs": 2, "num_minibatches": 2, "progress": False, "save_samples": 8,
    "value_model": args.rm if args.value_model == "rm" else "policy",
    "reward": json.dumps([{"reward_model": args.rm}]),
    "data": json.dumps([{"source": "builtin:arithmetic_rlvr", "n": 200},
                        {"source": "builtin:ifeval_rlvr", "count": 200}]),
    "eval_data": "[]",
}
config = load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in overrides.items()])
start = time.perf_counter()
run_rl(config, command="bench/ppo_reward_model.py")
minutes = (time.perf_counter() - start) / 60

records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if "reward_mean" in r]
third = max(1, len(train) // 3)


def mean(rows, key):
    values = [r[key] for r in rows if key in r]
    return sum(values) / max(len(values), 1)


print(f"steps {len(train)}, {minutes:.1f} min")
print(f"reward-model score: first third {mean(train[:third], 'reward_mean'):.3f}, "
      f"last third {mean(train[-third:], 'reward_mean'):.3f}")
kls = [r.get("kl", float("nan")) for r in train]
print(f"KL per token: first {kls[0]:.4f}, max {max(kls):.4f}, last {kls[-1]:.4f}; "
      f"final beta {train[-1].get('beta', args.beta)}")
print(f"response length: first third {mean(train[:third], 'response_length'):.1f}, "
      f"last third {mean(train[-third:], 'response_length'):.1f}")


# --- held-out before/after: greedy completions of base and trained policy, scored by the RM
from posttrain.data.sources import load_source  # noqa: E402
from posttrain.evaluation.generation import HFGenerator  # noqa: E402
from posttrain.evaluation.metrics import mean_confidence_interval  # noqa: E402
from posttrain.models import load_model, load_tokenizer  # noqa: E402
from posttrain.rewards import get_verifier  # noqa: E402
from posttrain.rewards.reward_model import RewardModelScorer  # noqa: E402

heldout = (load_source("builtin:arithmetic_rlvr:test", n=args.heldout)
           + load_source("builtin:ifeval_rlvr:test", n=args.heldout))
prompts = [r["messages"] for r in heldout]
scorer = RewardModelScorer(args.rm)
results = {}
for name, spec in (("base", config.model), ("trained", str(Path(args.out) / "model"))):
    generator = HFGenerator(load_model(spec), load_tokenizer(spec), batch_size=16)
    texts = [c[0] for c in generator.generate(prompts, max_new_tokens=args.max_new_tokens)]
    verified = [get_verifier(r["verifier"])(t, r["ground_truth"]).score for r, t in zip(heldout, texts)]
    results[name] = {"rm": scorer.score(prompts, texts), "verified": verified}
diff = [b - a for a, b in zip(results["base"]["rm"], results["trained"]["rm"])]
mean_diff, low, high = mean_confidence_interval(diff)
print(f"held-out ({len(heldout)} prompts, greedy): RM score base {sum(results['base']['rm']) / len(diff):.3f}, "
      f"trained {sum(results['trained']['rm']) / len(diff):.3f}; paired difference {mean_diff:+.3f} "
      f"95% [{low:+.3f}, {high:+.3f}]")
print("held-out verifiable score: base %.3f, trained %.3f" % tuple(
    sum(results[k]["verified"]) / len(heldout) for k in ("base", "trained")))
(Path(args.out) / "heldout.json").write_text(json.dumps(results, indent=1) + "\n")
