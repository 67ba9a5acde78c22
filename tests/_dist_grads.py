"""Run by tests/test_engine.py under `accelerate launch --num_processes N`: computes the first
step's gradients of an SFT batch and saves them (rank 0) for comparison."""

import sys

import torch

from posttrain.config import load_config
from posttrain.train.engine import Engine
from posttrain.data.sft import SFTBatches, tokenize_sft
from posttrain.train.sft import SFTConfig, sft_normalizer_fn, sft_step
from posttrain.data import load_source
from posttrain.models import load_model, load_tokenizer


def first_step_grads(model_dir: str, reduction: str, batch_size: int, accum: int, out: str | None = None):
    config = load_config(SFTConfig, overrides=[f"model={model_dir}", f"batch_size={batch_size}",
                                               f"gradient_accumulation_steps={accum}", f"loss_reduction={reduction}",
                                               "progress=false", "out=/tmp/posttrain-dist-grads", "max_length=96"])
    tokenizer = load_tokenizer(model_dir)
    torch.manual_seed(0)
    model = load_model(model_dir)
    engine = Engine(config, model, tokenizer)
    rows = load_source("builtin:arithmetic_sft", n=32, seed=3)
    examples, _ = tokenize_sft(rows, tokenizer, config.max_length, "test")
    batches = SFTBatches(examples, tokenizer.pad_token_id, config.max_length, packing=True)
    engine.model = engine.accelerator.prepare(engine.model)
    micro = [batches(idx) for idx in engine._step_indices(len(batches))]
    loss, _ = engine.accumulate_gradients(micro, sft_step(reduction), sft_normalizer_fn(reduction))
    grads = {n: p.grad.detach().clone() for n, p in engine.accelerator.unwrap_model(engine.model).named_parameters()}
    if out and engine.is_main:
        torch.save({"loss": loss, "grads": grads}, out)
    return loss, grads


if __name__ == "__main__":
    first_step_grads(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
