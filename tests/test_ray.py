"""Rollout workers as Ray actors on a two-node cluster simulated in this machine
(``ray.cluster_utils.Cluster``: a head and one worker node, one CPU each), so placement across
nodes, the object-store weight sync and the async submit/collect API run for real.

Every rollout is compared with ``HFRollout`` in this process on the same weights, prompts and
seeds: seeded sampling draws each completion from its own stream, so the chunks the workers
sample joined together must be the single-process rollout token for token."""

import copy
import os

import pytest
import torch

ray = pytest.importorskip("ray")

from posttrain.models import load_model  # noqa: E402
from posttrain.train.engine import TrainingError  # noqa: E402
from posttrain.train.rl.ray_rollout import RayRollout, check_placement, concat_rollouts, run_on_ray, \
    split_prompts  # noqa: E402
from posttrain.train.rl.rollout import merged_weights, tied_names  # noqa: E402
from posttrain.train.rl.rollout import HFRollout  # noqa: E402

SAMPLING = dict(n=3, max_new_tokens=6, temperature=0.9, top_k=50)


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def workers(cluster, tiny_model_dir):
    rollout = RayRollout(tiny_model_dir, num_workers=2, batch_size=64)
    yield rollout
    rollout.close()


@pytest.fixture(scope="module")
def local_model(tiny_model_dir):
    return load_model(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["What is 2 + 3?", "Name a colour.", "Count to five, please, slowly and clearly.", "Hi", "Say yes."]
    return [tokenizer(t)["input_ids"] for t in texts]


def perturbed(model, scale=0.5, seed=1):
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers.1." in name:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def assert_same_rollout(got, want):
    assert got.prompt_ids == want.prompt_ids
    assert torch.equal(got.prompt_index, want.prompt_index)
    assert torch.equal(got.completion_ids, want.completion_ids)
    assert torch.equal(got.completion_mask, want.completion_mask)
    assert torch.equal(got.finished, want.finished)
    assert got.texts == want.texts
    torch.testing.assert_close(got.sampling_logps, want.sampling_logps, atol=1e-5, rtol=0)


def local(model, tokenizer, prompts, seeds, **kw):
    return HFRollout(model, tokenizer, batch_size=64).generate(prompts, seeds=seeds, **{**SAMPLING, **kw})


# --- pure helpers (no cluster)


def test_split_prompts_contiguous_and_balanced():
    assert split_prompts(5, 2) == [(0, 3), (3, 5)]
    assert split_prompts(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert split_prompts(1, 3) == [(0, 1)]   # idle workers get no call


def test_concat_rollouts_pads_and_rebases(local_model, tokenizer, prompts):
    whole = local(local_model, tokenizer, prompts, [7, 8, 9, 10, 11])
    parts = [local(local_model, tokenizer, prompts[:2], [7, 8]),
             local(local_model, tokenizer, prompts[2:], [9, 10, 11])]
    assert_same_rollout(concat_rollouts(parts, [0, 2]), whole)


def test_check_placement_refuses_what_never_fits():
    nodes = [{"Alive": True, "Resources": {"CPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 8.0}}]
    check_placement(nodes, {"CPU": 1}, 3, "SPREAD")
    check_placement(nodes, {"CPU": 1}, 2, "STRICT_SPREAD")
    with pytest.raises(TrainingError, match="need 3 nodes"):
        check_placement(nodes, {"CPU": 1}, 3, "STRICT_SPREAD")
    with pytest.raises(TrainingError, match="one node with 3"):
        check_placement(nodes, {"CPU": 1}, 3, "STRICT_PACK")
    with pytest.raises(TrainingError, match="GPU"):
        check_placement(nodes, {"CPU": 1, "GPU": 1}, 1, "SPREAD")


def test_merged_weights_unwrap_and_merge_lora(local_model):
    from posttrain.models import apply_lora

    class Wrapper(torch.nn.Module):  # what DDP / accelerate put around the model
        def __init__(self, module):
            super().__init__()
            self.module = module

    peft = apply_lora(copy.deepcopy(local_model), rank=2, alpha=4, dropout=0.0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    state = merged_weights(Wrapper(peft), tied_copies=False, device="cpu")   # what Ray workers get
    assert tied_names(local_model) == {"lm_head.weight"}    # sent once, as the input embedding
    assert state.keys() == local_model.state_dict().keys() - {"lm_head.weight"}
    merged = copy.deepcopy(peft).merge_and_unload().state_dict()
    assert all(torch.equal(state[k], merged[k]) for k in state)
    every = merged_weights(Wrapper(peft))                   # what vLLM gets: tied copies by name too
    assert every.keys() == local_model.state_dict().keys()
    assert torch.equal(every["lm_head.weight"], every["model.embed_tokens.weight"])
    assert not torch.equal(state["model.layers.0.self_attn.q_proj.weight"],
                           local_model.state_dict()["model.layers.0.self_attn.q_proj.weight"])


# --- on the two-node cluster


def test_workers_spread_over_both_nodes(cluster, workers):
    nodes = workers.worker_nodes()
    assert len(nodes) == 2 and len(set(nodes)) == 2
    assert set(nodes) == {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_strict_spread_beyond_the_nodes_is_refused_before_starting(cluster, tiny_model_dir):
    with pytest.raises(TrainingError, match="STRICT_SPREAD need 3 nodes"):
        RayRollout(tiny_model_dir, num_workers=3, placement_strategy="STRICT_SPREAD")


def test_seeded_generate_equals_one_process(workers, local_model, tokenizer, prompts):
    workers.update_weights(local_model, version=0)
    seeds = [101, 202, 303, 404, 505]
    got = workers.generate(prompts, seeds=seeds, **SAMPLING)
    assert_same_rollout(got, local(local_model, tokenizer, prompts, seeds))
    assert workers.last_version == 0
    greedy = dict(n=1, max_new_tokens=6, greedy=True)
    assert_same_rollout(workers.generate(prompts, **greedy),
                        HFRollout(local_model, tokenizer, batch_size=64).generate(prompts, **greedy))


def test_update_weights_reaches_every_worker(workers, local_model, tokenizer, prompts):
    workers.update_weights(local_model, version=0)
    new = perturbed(local_model)
    seeds = [1, 2, 3, 4, 5]
    before = workers.generate(prompts, seeds=seeds, **SAMPLING)
    assert workers.update_weights(new) == 1
    after = workers.generate(prompts, seeds=seeds, **SAMPLING)
    assert workers.last_version == 1 and workers.worker_versions() == [1, 1]
    assert_same_rollout(after, local(new, tokenizer, prompts, seeds))
    assert not torch.equal(before.sampling_logps, after.sampling_logps)


def test_async_batches_keep_the_weights_they_were_submitted_with(workers, local_model, tokenizer, prompts):
    workers.update_weights(local_model, version=5)
    new = perturbed(local_model, seed=2)
    seeds_a, seeds_b = [11, 12, 13, 14, 15], [21, 22, 23, 24, 25]
    first = workers.submit(prompts, seeds=seeds_a, **SAMPLING)
    assert not workers.ready(first)                                # returned before the workers were done
    assert workers.update_weights(new) == 6                        # queued behind the generation in flight
    second = workers.submit(prompts, seeds=seeds_b, **SAMPLING)
    rollout_b, version_b = workers.result(second)                  # collected in any order
    rollout_a, version_a = workers.result(first)
    assert (version_a, version_b) == (5, 6)
    assert_same_rollout(rollout_a, local(local_model, tokenizer, prompts, seeds_a))
    assert_same_rollout(rollout_b, local(new, tokenizer, prompts, seeds_b))
    assert workers.ready(first) and workers.wait_for_weights() == 6


def test_action_mask_is_refused(workers, prompts):
    with pytest.raises(TrainingError, match="placement=local"):
        workers.submit(prompts, n=1, max_new_tokens=2, action_mask=lambda attention: None)


def test_run_on_ray_runs_in_an_actor(cluster):
    def where_am_i(x, scale=1):  # a local function travels by value (cloudpickle)
        context = ray.get_runtime_context()
        return {"value": x * scale, "pid": os.getpid(), "in_actor": context.get_actor_id() is not None,
                "node": context.get_node_id()}

    # num_cpus=0: the rollout workers hold both CPUs of this cluster
    out = run_on_ray(where_am_i, 21, num_cpus=0, scale=2)
    assert out["value"] == 42 and out["in_actor"] and out["pid"] != os.getpid()
    assert out["node"] == ray.get_runtime_context().get_node_id()   # the learner writes where the user runs
