"""Rollout workers as Ray actors, placed across the nodes of a Ray cluster (``docs/ray.md``).

``RayRollout`` is a :class:`~posttrain.train.rl.rollout.RolloutBackend` that lives in the learner
(the driver, or a Ray actor started with :func:`run_on_ray`) and fans each ``generate`` out over
``num_workers`` :class:`RolloutWorker` actors. Each worker holds its own copy of the policy and
its own backend (``hf`` here; any name ``make_backend`` accepts is passed through).

Placement: one placement-group bundle per worker (``cpus_per_worker`` CPUs, ``gpus_per_worker``
GPUs), strategy ``SPREAD`` by default, so on a multi-node cluster the workers land on different
nodes where they fit. The request is checked against the cluster's nodes before anything starts
(``STRICT_SPREAD`` needs one node per worker), and a group that cannot be placed in
``placement_timeout`` seconds is refused with the cluster's resources in the message.

Sampling: ``generate`` cuts the prompts (and their seeds) into contiguous chunks, one per worker,
and concatenates the workers' rollouts group-contiguously, ``prompt_index`` counted over the whole
prompt list. With ``seeds`` every completion has its own random stream
(``rollout.SeededSampler``), so the result is token for token what one ``HFRollout`` gives for
the same prompts, whatever the number of workers.

Weights: ``update_weights(model)`` takes the bare policy's full state dict (``.module`` unwrapped,
LoRA merged), puts it into the object store once, and queues a load on every worker; the call
returns at once. The driver counts policy versions (``version``); every worker records the
version it has loaded, and every rollout comes back with the version that sampled it.

Async: ``submit(...)`` queues a generation and returns a :class:`RolloutHandle` at once;
``result(handle)`` gives ``(Rollout, version_used)``. An actor runs its calls one at a time in
the order they were submitted, so a weight load queued while a generation runs waits for it (the
generation is never corrupted), and a generation submitted after ``update_weights`` samples from
the new weights. A batch therefore samples from the version current when it was *submitted*:
its staleness when collected is the number of updates made since, which is at most the number
of batches submitted but not yet collected when the learner updates once per collected batch.

Transport: the state dict travels through Ray's object store (CPU memory, shared by the workers
of a node; size it with ``ray start --object-store-memory``). GPU-to-GPU transports (NCCL) and
bucketing are not done here.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from posttrain.train.engine import TrainingError
from posttrain.train.rl.rollout import Rollout, merged_weights, tied_names

__all__ = ["RolloutWorker", "rollout_worker_actor", "RayRollout", "RolloutHandle", "run_on_ray", "connect",
           "split_prompts", "concat_rollouts"]

STRATEGIES = ("SPREAD", "STRICT_SPREAD", "PACK", "STRICT_PACK")
# Forwarded to every Ray worker process when connect() starts or joins a cluster.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")


# ---------------------------------------------------------------------------------------------
# Ray itself


def _ray():
    try:
        import ray
    except ImportError:
        raise TrainingError("placement=ray needs Ray: pip install 'posttrain[ray]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None, **init_kwargs):
    """Join the Ray cluster at ``address`` (``"auto"``: the one ``ray start`` runs on this node;
    ``"ray://host:10001"``: Ray Client), or start a local one when ``address`` is None and
    ``RAY_ADDRESS`` is unset. ``num_cpus``/``num_gpus`` size a local cluster only. Does nothing
    when this process is already connected. Returns the ``ray`` module."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    kwargs: dict[str, Any] = {"include_dashboard": False, "runtime_env": {"env_vars": env}} if env else \
        {"include_dashboard": False}
    kwargs.update(init_kwargs)
    if not address:
        kwargs.update({k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None})
    elif num_cpus is not None or num_gpus is not None:
        raise TrainingError(f"num_cpus/num_gpus size a local Ray cluster; the cluster at {address!r} has its own "
                            "(set them with `ray start --num-cpus ... --num-gpus ...` on each node)")
    _probe(address)
    try:
        ray.init(address=address or None, **kwargs)
    except ConnectionError as e:
        raise TrainingError(f"cannot reach a Ray cluster at {address!r}: {e}. Start one with `ray start --head` "
                            "(docs/ray.md) or leave the address out for a local cluster") from None
    return ray


def _probe(address: str | None, timeout: float = 10.0):
    """A ``host:port`` address must accept a connection: Ray itself retries for minutes."""
    import socket

    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot reach a Ray cluster at {address!r} ({e}). Start one with `ray start --head` "
                            "on the head node and pass the address it prints (docs/ray.md)") from None


def run_on_ray(fn: Callable, *args, num_cpus: float = 1, num_gpus: float = 0, resources: dict | None = None,
               on_this_node: bool = True, **kwargs):
    """``fn(*args, **kwargs)`` inside a Ray actor holding ``num_cpus``/``num_gpus`` (e.g. the
    learner: ``run_on_ray(run_rl, config, num_gpus=1)``); returns its value and ends the actor.
    ``on_this_node``: the actor runs on the calling process's node, so the files it writes (the
    run folder) land where the user looks for them; otherwise Ray picks the node. ``fn`` and its
    arguments are pickled (cloudpickle: module-level functions travel by name). Connects to (or
    starts) a cluster first if this process is not connected."""
    ray = connect()
    # The caller's import path travels with the actor, so the user's own modules (reward
    # functions named as ``module:function``) import there as they do here.
    path = os.pathsep.join(p for p in sys.path if p)
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or None,
                               "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    if on_this_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    actor = ray.remote(_Runner).options(**options).remote()
    try:
        return ray.get(actor.run.remote(fn, args, kwargs))
    finally:
        ray.kill(actor)


class _Runner:
    def run(self, fn, args, kwargs):
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Weights, prompts, rollouts


def split_prompts(count: int, parts: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``parts`` contiguous chunks of ``count`` prompts, sizes differing by at
    most one, larger ones first; empty chunks are left out."""
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


def concat_rollouts(parts: list[Rollout], offsets: list[int], seconds: float | None = None) -> Rollout:
    """One rollout from per-chunk rollouts: rows in chunk order (so still group-contiguous),
    right-padded to the longest completion (``pad_id``, mask 0, log-prob 0), ``prompt_index``
    shifted by each chunk's first prompt. ``seconds``: the wall time to report (default: the
    slowest chunk's)."""
    first = parts[0]
    T = max(p.completion_ids.shape[1] for p in parts)

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return Rollout(
        prompt_ids=[list(ids) for p in parts for ids in p.prompt_ids],
        prompt_index=torch.cat([p.prompt_index + off for p, off in zip(parts, offsets)]),
        completion_ids=torch.cat([pad(p.completion_ids, first.pad_id) for p in parts]),
        completion_mask=torch.cat([pad(p.completion_mask, 0.0) for p in parts]),
        sampling_logps=torch.cat([pad(p.sampling_logps, 0.0) for p in parts]),
        texts=[t for p in parts for t in p.texts],
        finished=torch.cat([p.finished for p in parts]),
        group_size=first.group_size, pad_id=first.pad_id,
        seconds=max(p.seconds for p in parts) if seconds is None else seconds)


# ---------------------------------------------------------------------------------------------
# The worker


class RolloutWorker:
    """The body of one rollout actor: a policy copy, its tokenizer and a rollout backend. Ray
    runs it through :func:`rollout_worker_actor`; it also works in-process (tests).

    ``model_spec`` must be loadable on the worker's node (a hub id, or a folder every node
    sees); the weights that matter arrive through ``load_weights``. ``backend_options``: more
    keyword arguments of ``make_backend`` (e.g. ``{"vllm_options": {...}}``). With a vLLM
    backend the engine holds the weights it samples with; the worker's transformers copy (keep
    it on the CPU) is what ``load_weights`` fills and the backend's ``update_weights`` reads."""

    def __init__(self, model_spec: str, tokenizer_spec: str | None = None, template: str | None = None,
                 backend: str = "hf", dtype: str = "float32", attn_implementation: str | None = None,
                 batch_size: int = 64, share_prompts: bool = False, cache: str = "dynamic",
                 device: str = "cpu", threads: int | None = None, backend_options: dict | None = None):
        from posttrain.models import load_model, load_tokenizer, resolve_model_path
        from posttrain.train.rl.rollout import make_backend

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = load_tokenizer(tokenizer_spec or model_spec, template=template)
        self.model = load_model(model_spec, dtype=dtype, attn_implementation=attn_implementation, device=device)
        self.model.eval().requires_grad_(False)
        self._tied = tied_names(self.model)
        self.backend = make_backend(backend, self.model, self.tokenizer, model_path=resolve_model_path(model_spec),
                                    batch_size=batch_size, share_prompts=share_prompts, cache=cache,
                                    **(backend_options or {}))
        self._version = 0

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                 action_mask=None, seeds=None) -> Rollout:
        return self.backend.generate(prompt_ids, n, max_new_tokens, temperature=temperature, top_p=top_p,
                                     top_k=top_k, greedy=greedy, action_mask=action_mask, seeds=seeds)

    def generate_versioned(self, *args, **kwargs) -> tuple[Rollout, int]:
        """``generate`` and the policy version that sampled it."""
        return self.generate(*args, **kwargs), self._version

    @torch.no_grad()
    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Copy ``state_dict`` (``rollout.merged_weights(policy, tied_copies=False)``) into the
        worker's model, hand the model to the backend, and record ``version``. (An object-store
        reference passed to an actor call arrives here as the dict itself.)"""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = set(missing) - self._tied
        if unexpected or missing:
            raise TrainingError(f"weights do not fit the rollout model: missing {sorted(missing)[:5]}, "
                                f"unexpected {sorted(unexpected)[:5]}")
        self.backend.update_weights(self.model)
        self._version = version
        return version

    def version(self) -> int:
        return self._version

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


@functools.cache
def rollout_worker_actor():
    """``RolloutWorker`` as a Ray actor class (made on first use, so importing this module does
    not need Ray)."""
    return _ray().remote(RolloutWorker)


# ---------------------------------------------------------------------------------------------
# The driver side


@dataclass
class RolloutHandle:
    """A submitted generation: one object reference per busy worker, the first prompt of each
    chunk, and the policy version the workers will sample it with."""

    refs: list
    offsets: list[int]
    version: int
    submitted: float = field(default_factory=time.perf_counter)


class RayRollout:
    """``RolloutBackend`` over ``num_workers`` Ray actors (module docstring): the sync
    ``generate``/``update_weights`` of every backend, plus ``submit``/``result`` for async RL.

    ``batch_size``, ``share_prompts`` and ``cache`` are each worker's ``HFRollout`` settings,
    ``backend_options`` more ``make_backend`` keywords (``{"vllm_options": {...}}``);
    ``tokenizer_spec``/``template`` default to the model's tokenizer as ``load_policy`` loads it.
    With ``gpus_per_worker`` an ``hf`` worker samples on its GPU; a vLLM worker keeps its
    transformers copy on the CPU and leaves the GPU to the engine."""

    def __init__(self, model_spec: str, num_workers: int = 1, backend: str = "hf", tokenizer_spec: str | None = None,
                 template: str | None = None, dtype: str = "float32", attn_implementation: str | None = None,
                 batch_size: int = 64, share_prompts: bool = False, cache: str = "dynamic",
                 cpus_per_worker: float = 1, gpus_per_worker: float = 0, placement_strategy: str = "SPREAD",
                 placement_timeout: float = 120.0, address: str | None = None,
                 backend_options: dict | None = None):
        if num_workers < 1:
            raise TrainingError(f"rollout_workers={num_workers}: need at least one rollout worker")
        if placement_strategy not in STRATEGIES:
            raise TrainingError(f"unknown placement strategy {placement_strategy!r}: choose one of "
                                f"{', '.join(STRATEGIES)}")
        ray = connect(address)
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.num_workers, self.version, self.last_version = num_workers, 0, None
        self._pending_loads: list = []
        self.workers: list = []
        self.placement_group = None
        bundle = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
        check_placement(ray.nodes(), bundle, num_workers, placement_strategy)
        self.placement_group = placement_group([dict(bundle) for _ in range(num_workers)],
                                               strategy=placement_strategy)
        try:
            ray.get(self.placement_group.ready(), timeout=placement_timeout)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement_group)
            raise TrainingError(f"{num_workers} rollout worker(s) of {bundle} ({placement_strategy}) could not be "
                                f"placed in {placement_timeout:g} s; free now: {ray.available_resources()}") from None
        actor = rollout_worker_actor()
        device = "cuda" if gpus_per_worker and backend == "hf" else "cpu"
        try:
            for i in range(num_workers):
                self.workers.append(actor.options(
                    num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self.placement_group, placement_group_bundle_index=i)).remote(
                    model_spec, tokenizer_spec, template, backend, dtype, attn_implementation, batch_size,
                    share_prompts, cache, device, max(1, int(cpus_per_worker)), backend_options))
            self._nodes = ray.get([w.node_id.remote() for w in self.workers])  # surfaces load errors now
        except ray.exceptions.RayActorError as e:
            self.close()
            raise TrainingError(f"a rollout worker failed to start: {e}") from None

    # --- RolloutBackend

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
                 action_mask=None, seeds=None) -> Rollout:
        """The workers' rollouts of contiguous prompt chunks, joined (module docstring);
        ``seconds`` is the wall time of the call. ``last_version`` is the version that sampled it."""
        start = time.perf_counter()
        rollout, self.last_version = self.result(self.submit(
            prompt_ids, n, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy,
            action_mask=action_mask, seeds=seeds))
        rollout.seconds = time.perf_counter() - start
        return rollout

    def update_weights(self, model: torch.nn.Module, version: int | None = None) -> int:
        """Queue ``model``'s weights (``rollout.merged_weights``: LoRA merged, tied tensors once,
        on the CPU; one copy in the object store) on every worker and return the new policy
        version (``version``, or the last one + 1). Returns at once: a generation in flight
        finishes on the old weights, later ones use the new."""
        ray = _ray()
        ref = ray.put(merged_weights(model, tied_copies=False, device="cpu"))
        self.version = self.version + 1 if version is None else version
        self._pending_loads += [w.load_weights.remote(ref, self.version) for w in self.workers]
        return self.version

    # --- async

    def submit(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, greedy=False,
               action_mask=None, seeds=None) -> RolloutHandle:
        """Queue a generation on the workers (contiguous prompt chunks) and return at once. It
        samples from the weights of the last ``update_weights`` before this call."""
        if action_mask is not None:
            raise TrainingError("NLPO's action mask runs the masking model beside the sampler: use the local hf "
                                "rollout backend (placement=local) for nlpo")
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
        if not prompt_ids:
            raise ValueError("no prompts to generate from")
        refs, offsets = [], []
        for worker, (a, b) in zip(self.workers, split_prompts(len(prompt_ids), self.num_workers)):
            refs.append(worker.generate_versioned.remote(
                [list(p) for p in prompt_ids[a:b]], n, max_new_tokens, temperature=temperature, top_p=top_p,
                top_k=top_k, greedy=greedy, seeds=None if seeds is None else list(seeds[a:b])))
            offsets.append(a)
        return RolloutHandle(refs, offsets, self.version)

    def ready(self, handle: RolloutHandle) -> bool:
        """Whether ``result(handle)`` would return without waiting."""
        ray = _ray()
        done, _ = ray.wait(handle.refs, num_returns=len(handle.refs), timeout=0)
        return len(done) == len(handle.refs)

    def result(self, handle: RolloutHandle, timeout: float | None = None) -> tuple[Rollout, int]:
        """Wait for a submitted generation: the joined rollout (``seconds``: the slowest worker's
        generation time) and the policy version that sampled it."""
        ray = _ray()
        outputs = ray.get(handle.refs, timeout=timeout)
        self._check_loads()
        versions = {v for _, v in outputs}
        if versions != {handle.version}:  # cannot happen while calls run in submission order
            raise TrainingError(f"rollout workers sampled with policy versions {sorted(versions)}, "
                                f"expected {handle.version}")
        return concat_rollouts([r for r, _ in outputs], handle.offsets), handle.version

    def wait_for_weights(self) -> int:
        """Block until every queued weight load has finished; the loaded version."""
        self._check_loads(wait=True)
        return self.version

    def _check_loads(self, wait: bool = False):
        """Raise a failed weight load; drop finished ones (their object-store copy can go)."""
        if self._pending_loads:
            ray = _ray()
            done, self._pending_loads = ray.wait(self._pending_loads, num_returns=len(self._pending_loads),
                                                 timeout=None if wait else 0)
            ray.get(done)

    # --- placement and lifetime

    def worker_nodes(self) -> list[str]:
        """The Ray node id of each worker, in worker order."""
        return list(self._nodes)

    def worker_versions(self) -> list[int]:
        """The policy version each worker has loaded (waits for queued calls)."""
        return _ray().get([w.version.remote() for w in self.workers])

    def close(self):
        """End the workers and free their placement group. Safe to call twice."""
        if not self.workers and self.placement_group is None:
            return
        ray = _ray()
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            ray.kill(worker)
        self.workers, self._pending_loads = [], []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_placement(nodes: list[dict], bundle: dict[str, float], count: int, strategy: str):
    """Refuse a placement the cluster's alive nodes can never hold (their total resources, before
    anything else takes a share): ``STRICT_SPREAD`` needs ``count`` nodes that each hold a bundle,
    ``STRICT_PACK`` one node that holds them all, ``SPREAD``/``PACK`` room for them all anywhere."""
    fits = []
    for node in nodes:
        if not node.get("Alive", True):
            continue
        have = node.get("Resources", {})
        fits.append(min((int(have.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0), default=count))
    if strategy == "STRICT_SPREAD":
        ok, need = sum(f >= 1 for f in fits) >= count, f"{count} nodes with {bundle} each"
    elif strategy == "STRICT_PACK":
        ok, need = any(f >= count for f in fits), f"one node with {count} × {bundle}"
    else:
        ok, need = sum(fits) >= count, f"{count} × {bundle} in all"
    if not ok:
        raise TrainingError(f"{count} rollout worker(s) with placement {strategy} need {need}; the cluster's "
                            f"{len(fits)} node(s) hold {fits} such bundle(s) each. Add nodes (`ray start "
                            "--address=...`, docs/ray.md), lower rollout_workers or cpus/gpus per worker")
