"""``AlgorithmSpec``: everything the RL trainer, the config checks, the command line and the
recipes need to know about one online-RL algorithm, so none of them compares algorithm names.

A spec names its code by ``"module:attribute"`` paths, resolved on first use (as the command
table in ``posttrain.cli`` does), so reading the registry — ``posttrain --help``, config
validation — imports no torch. ``Advantages`` is what every advantage estimator returns.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from posttrain.train.rl.config import RLConfig

__all__ = ["Advantages", "AlgorithmSpec", "resolve"]

#: The runner every RL command shares.
RUNNER = "posttrain.train.rl.trainer:run_rl"


def resolve(path: str) -> Any:
    """The object at ``"package.module:attribute"``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Advantages:
    """What an advantage estimator returns for one rollout batch of B completions.

    advantages: (B,) one per sequence, or (B, T) one per token.
    keep: (B,) bool, the rows to train on (zero-variance groups may be dropped).
    metrics: scalars to log (each averaged over processes), e.g. ``zero_variance_share``.
    returns, old_values: (B, T) value targets and the values at rollout time (value-model
        algorithms only).
    """

    advantages: torch.Tensor
    keep: torch.Tensor
    metrics: dict
    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None


@dataclass(frozen=True)
class AlgorithmSpec:
    """One online-RL algorithm.

    name: the command (``posttrain <name>``) and the config's ``algorithm``.
    help: one line for ``posttrain --help``.
    config_path: its options dataclass, a subclass of ``RLConfig`` (``"module:Class"``).
    advantages_path: ``(scores_B, batch, config, reduce_sum) -> Advantages``. ``batch`` holds
        the rollout's (B, T) tensors (``mask``, ``old_logps``, ``ref_logps`` when β > 0,
        ``old_values`` for value-model algorithms); ``reduce_sum`` sums a list of floats over
        processes, for statistics of the global batch (a prompt's group is never split).
    policy_loss_path: the per-minibatch policy loss, with the signature of
        ``posttrain.losses.policy.clipped_policy_loss``; it returns (loss, diagnostics) with at
        least ``clip_fraction``, ``ratio_mean`` and ``approx_kl``.
    group_based: the advantages compare the completions of one prompt, so ``group_size`` ≥ 2,
        and a KL folded into the reward is summed into one reward per sequence.
    value_model: a separate value model is trained beside the policy (GAE, value loss).
    action_mask: sampling and every log-prob are masked to the top-p tokens of a periodically
        refreshed frozen copy of the policy (NLPO).

    The reference model is the same for every algorithm: loaded when β > 0
    (``needs_reference``).
    """

    name: str
    help: str
    config_path: str
    advantages_path: str
    policy_loss_path: str = "posttrain.losses.policy:clipped_policy_loss"
    group_based: bool = False
    value_model: bool = False
    action_mask: bool = False

    @property
    def config(self) -> type[RLConfig]:
        return resolve(self.config_path)

    @property
    def advantages(self) -> Callable[..., Advantages]:
        return resolve(self.advantages_path)

    @property
    def policy_loss(self) -> Callable[..., tuple[torch.Tensor, dict]]:
        return resolve(self.policy_loss_path)

    def needs_reference(self, config: RLConfig) -> bool:
        """A frozen reference policy π_ref is computed when the KL coefficient β > 0."""
        return config.beta > 0

    def command(self) -> tuple[str, str, str]:
        """The entry of ``posttrain.cli.TRAINING_COMMANDS``: (config path, runner path, help)."""
        return self.config_path, RUNNER, self.help
