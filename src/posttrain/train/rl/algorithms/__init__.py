"""The online-RL algorithms: one file each, one registry entry each.

Every algorithm is the same loop (``posttrain.train.rl.trainer``: sample, score, advantages,
clipped updates, KL, checkpoints); what differs is declared by its ``AlgorithmSpec``: its
options, its advantage estimator, its policy loss, whether it compares completions within a
prompt's group, and which extra models it trains or reads (value model, NLPO masking policy).
The trainer, the config checks, ``posttrain <command>`` and the recipes all read this table.

Each file's docstring gives its objective with the paper's equations, its defaults and where it
departs from the paper; docs/rl.md has the table of all of them.

Adding an algorithm: one file here (its config dataclass, its advantage estimator and/or policy
loss as pure functions, with the paper's equations) and one entry below.
"""

from __future__ import annotations

from posttrain.train.rl.algorithms.spec import Advantages, AlgorithmSpec

__all__ = ["ALGORITHMS", "Advantages", "AlgorithmSpec", "algorithm_spec", "rl_commands"]

_HERE = "posttrain.train.rl.algorithms"

#: name → spec; the command line lists them in this order.
ALGORITHMS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in (
    AlgorithmSpec("grpo", "RL with verifiable rewards: GRPO (also DAPO / Dr. GRPO aggregation)",
                  f"{_HERE}.grpo:GRPOConfig", f"{_HERE}.grpo:grpo_advantages", group_based=True),
    AlgorithmSpec("rloo", "RL with a leave-one-out baseline (RLOO)",
                  f"{_HERE}.rloo:RLOOConfig", f"{_HERE}.rloo:rloo_algorithm_advantages", group_based=True),
    AlgorithmSpec("ppo", "PPO with a value model, GAE and KL penalty",
                  f"{_HERE}.ppo:PPOConfig", f"{_HERE}.ppo:ppo_advantages", value_model=True),
    AlgorithmSpec("nlpo", "NLPO: PPO with top-p action masking by a periodically refreshed policy copy",
                  f"{_HERE}.nlpo:NLPOConfig", f"{_HERE}.ppo:ppo_advantages", value_model=True, action_mask=True),
    AlgorithmSpec("gspo", "GSPO: sequence-level importance ratio and clip on group advantages (Zheng et al. 2025)",
                  f"{_HERE}.gspo:GSPOConfig", f"{_HERE}.grpo:grpo_advantages", f"{_HERE}.gspo:gspo_policy_loss",
                  group_based=True),
    AlgorithmSpec("cispo", "CISPO: clipped stop-gradient IS weights, every token keeps its gradient (MiniMax-M1)",
                  f"{_HERE}.cispo:CISPOConfig", f"{_HERE}.grpo:grpo_advantages", f"{_HERE}.cispo:cispo_policy_loss",
                  group_based=True),
    AlgorithmSpec("reinforce_pp", "REINFORCE++: no critic, token-level KL in the reward, globally normalised returns",
                  f"{_HERE}.reinforce_pp:ReinforcePPConfig", f"{_HERE}.reinforce_pp:reinforce_pp_advantages"),
)}


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of algorithm ``name``; ValueError naming the known ones otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown RL algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None


def rl_commands() -> dict[str, tuple[str, str, str]]:
    """The RL entries of ``posttrain.cli.TRAINING_COMMANDS``: name → (config, runner, help)."""
    return {name: spec.command() for name, spec in ALGORITHMS.items()}
