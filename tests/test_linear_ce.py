"""The chunked linear + cross-entropy (``losses/linear_ce.py``) against the plain path: same loss,
same gradients, for every SFT reduction, on a raw tensor problem and through a tiny Llama."""

import pytest
import torch
import torch.nn.functional as F

from posttrain.losses.linear_ce import linear_cross_entropy

REDUCTIONS = ["sum", "token_mean", "sequence_mean"]


def _problem(seed=0, n=37, h=16, v=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, v, (n,), generator=g)
    target[::5] = -100                                   # ignored positions
    token_weight = torch.rand(n, generator=g, dtype=torch.float64)
    return hidden, weight, target, token_weight


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 100])
def test_chunked_loss_and_gradients_equal_the_plain_cross_entropy(chunk_size):
    hidden, weight, target, token_weight = _problem()
    plain = (F.cross_entropy(hidden @ weight.t(), target, reduction="none", ignore_index=-100) * token_weight).sum()
    plain_nll = F.cross_entropy(hidden @ weight.t(), target, reduction="none", ignore_index=-100)
    g_hidden, g_weight = torch.autograd.grad(plain * 0.7, (hidden, weight))

    loss, nll = linear_cross_entropy(hidden, weight, target, token_weight, chunk_size=chunk_size)
    c_hidden, c_weight = torch.autograd.grad(loss * 0.7, (hidden, weight))   # a non-unit upstream grad
    torch.testing.assert_close(loss, plain, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nll, plain_nll, rtol=1e-10, atol=1e-10)
    assert (nll[target == -100] == 0).all()
    torch.testing.assert_close(c_hidden, g_hidden, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c_weight, g_weight, rtol=1e-10, atol=1e-10)


def test_chunked_loss_without_grad_mode_builds_no_gradients_and_gives_the_same_value():
    hidden, weight, target, token_weight = _problem(seed=1)
    with torch.no_grad():
        loss, _ = linear_cross_entropy(hidden, weight, target, token_weight, chunk_size=4)
        expected = (F.cross_entropy(hidden @ weight.t(), target, reduction="none") * token_weight).sum()
    assert not loss.requires_grad
    assert abs(float(loss) - float(expected)) < 1e-5


def test_only_the_weight_needs_a_gradient_when_hidden_is_frozen():
    hidden, weight, target, _ = _problem(seed=2)
    hidden = hidden.detach()
    loss, _ = linear_cross_entropy(hidden, weight, target, chunk_size=5)
    (grad,) = torch.autograd.grad(loss, weight)
    (expected,) = torch.autograd.grad(F.cross_entropy(hidden @ weight.t(), target, reduction="sum"), weight)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)


def _packed_batch(tokenizer):
    from posttrain.data import collate_packed, encode_conversation, pack_sequences

    convs = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
             for a, b in [(1, 2), (13, 29), (7, 8), (120, 5), (3, 3)]]
    examples = [encode_conversation(tokenizer, c, max_length=128) for c in convs]
    rows = pack_sequences(examples, 128)
    return collate_packed(examples, rows, tokenizer.pad_token_id)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sft_step_with_the_chunked_head_equals_the_plain_step(tokenizer, reduction):
    from conftest import build_tiny_model

    from posttrain.train.sft import sft_step

    batch = _packed_batch(tokenizer)
    results = []
    for chunked in (False, True):
        model = build_tiny_model(tokenizer).train()
        numerator, metrics = sft_step(reduction, chunked_loss=chunked)(model, batch)
        numerator.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((float(numerator.detach()), metrics, grads))
    (plain, plain_metrics, plain_grads), (chunked, chunked_metrics, chunked_grads) = results
    assert abs(plain - chunked) < 1e-4 * max(1.0, abs(plain))
    assert abs(plain_metrics["token_nll"] - chunked_metrics["token_nll"]) < 1e-5
    assert plain_metrics["trained_tokens"] == chunked_metrics["trained_tokens"]
    for name, grad in plain_grads.items():   # the tied embedding/head weight included
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_heads_that_transform_their_logits_keep_the_plain_path(tokenizer):
    from conftest import build_tiny_model

    from posttrain.models.lm_head import chunkable_head

    model = build_tiny_model(tokenizer)
    decoder, weight = chunkable_head(model)
    assert decoder is model.model and weight is model.lm_head.weight
    model.config.final_logit_softcapping = 30.0          # Gemma-style soft-capping
    assert chunkable_head(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Linear(64, model.config.vocab_size, bias=True)
    assert chunkable_head(model) is None


def test_heldout_loss_is_the_same_with_the_chunked_head(tokenizer):
    from conftest import build_tiny_model

    from posttrain.data import encode_conversation
    from posttrain.data.sft import SFTBatches
    from posttrain.train.sft import heldout_loss

    convs = [[{"role": "user", "content": f"{a} times {b}?"}, {"role": "assistant", "content": f"{a * b}"}]
             for a, b in [(2, 3), (11, 12), (9, 9)]]
    batches = SFTBatches([encode_conversation(tokenizer, c, max_length=64) for c in convs], tokenizer.pad_token_id,
                         64, packing=False)
    model = build_tiny_model(tokenizer).eval()
    plain = heldout_loss(model, batches, 2, chunked=False)["loss"]
    assert plain > 1.0   # a random model: close to ln(vocab) per token
    assert heldout_loss(model, batches, 2, chunked=True)["loss"] == pytest.approx(plain, rel=1e-5)
