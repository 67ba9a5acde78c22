"""The chunked head log-probs (``losses/linear_ce.linear_log_probs``) and the completion layout
built on them (``train/layout.completion_token_logps``) against the plain full-logit path: same
log-probs, entropies and gradients, with and without shared prompts."""

import pytest
import torch

from posttrain.losses.linear_ce import linear_log_probs
from posttrain.losses.policy import entropy_from_logits


def _problem(seed=0, n=23, h=12, v=40):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)   # e.g. advantage × ratio per token
    return hidden, weight, target, upstream


@pytest.mark.parametrize("chunk_size", [1, 5, 23, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_log_probs_entropy_and_gradients_equal_the_plain_log_softmax(chunk_size, temperature):
    hidden, weight, target, upstream = _problem()
    logits = hidden @ weight.t() / temperature
    plain = torch.log_softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    plain_grads = torch.autograd.grad((plain * upstream).sum(), (hidden, weight))

    logp, entropy = linear_log_probs(hidden, weight, target, temperature, with_entropy=True, chunk_size=chunk_size)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(logp, plain, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach()), rtol=1e-10, atol=1e-10)
    assert not entropy.requires_grad
    for got, expected in zip(grads, plain_grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_log_probs_pass_the_finite_difference_check():
    hidden, weight, target, _ = _problem(seed=3, n=6, h=4, v=9)
    assert torch.autograd.gradcheck(lambda h, w: linear_log_probs(h, w, target, 0.9, chunk_size=4)[0],
                                    (hidden, weight))


def test_no_entropy_unless_asked_and_no_graph_in_no_grad_mode():
    hidden, weight, target, _ = _problem(seed=1)
    logp, entropy = linear_log_probs(hidden, weight, target)
    assert entropy is None and logp.requires_grad
    with torch.no_grad():
        logp, _ = linear_log_probs(hidden, weight, target)
    assert not logp.requires_grad


def _rollout_like(tokenizer, group=3):
    """Two prompts of different lengths, each answered ``group`` times, right-padded completions."""
    prompts = [tokenizer.encode("What is 2 + 3?"), tokenizer.encode("Name a colour, briefly please.")]
    rows = [p for p in prompts for _ in range(group)]
    g = torch.Generator().manual_seed(0)
    completion = torch.randint(5, 200, (len(rows), 7), generator=g)
    mask = torch.ones(completion.shape)
    for i, length in enumerate([7, 3, 5, 1, 6, 4]):
        mask[i, length:] = 0
        completion[i, length:] = tokenizer.pad_token_id
    return rows, completion, mask


@pytest.mark.parametrize("share_prompts", [False, True])
def test_completion_log_probs_through_a_model_equal_the_plain_path(tokenizer, share_prompts):
    from conftest import build_tiny_model

    from posttrain.models.layout import completion_token_logps

    rows, completion, mask = _rollout_like(tokenizer)
    upstream = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for chunked in (False, True):
        model = build_tiny_model(tokenizer).eval()
        logps, entropy = completion_token_logps(model, rows, completion, tokenizer.pad_token_id, mask, 0.8,
                                                share_prompts=share_prompts, with_entropy=True, chunked=chunked)
        (logps * upstream).sum().backward()
        results.append((logps.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_entropy, plain_grads), (chunked, chunked_entropy, chunked_grads) = results
    assert (plain[mask == 0] == 0).all() and (chunked[mask == 0] == 0).all()
    assert (plain[mask == 1] < 0).all()
    torch.testing.assert_close(chunked, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked_entropy, plain_entropy, rtol=1e-4, atol=1e-5)
    for name, grad in plain_grads.items():   # the tied embedding/head weight included (entries up to ~6)
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)


def test_a_forward_that_skips_the_decoder_is_a_clear_error(tokenizer):
    """A forward patched onto the instance that runs another model (as a deep copy of a model whose
    forward TRL/accelerate wrapped does) never reaches this decoder: say so, and how to go on."""
    from conftest import build_tiny_model

    from posttrain.models.layout import completion_token_logps

    model, other = build_tiny_model(tokenizer), build_tiny_model(tokenizer, seed=1)
    model.forward = other.forward
    rows, completion, mask = _rollout_like(tokenizer)
    with pytest.raises(RuntimeError, match="did not run its decoder.*chunked_loss=false"):
        completion_token_logps(model, rows, completion, tokenizer.pad_token_id, mask)
