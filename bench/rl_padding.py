"""The RL update on rows of mixed lengths: length-grouped, trimmed micro-batches against the former
full-width ones (a benchmark, not a test).

A random-init Llama (``--hidden``, ``--layers``), ``--rows`` rows whose prompts have 20–40 tokens
and whose completions are mostly short (8–32 tokens) with a ``--long-share`` running to the full
``--width``, as a GRPO batch with a few cut-off samples or a multi-turn batch with a few long
episodes. One optimizer update's forwards and backwards (``completion_token_logps``, the chunked
head) over micro-batches of ``--batch-size`` rows from ``trainer.minibatch_plan``: rows in random
order at the batch's width (before), or grouped by width and each micro-batch trimmed to its own
(now). Prints the completion positions run and the median seconds per update of each, and the
ratios.

    PYTHONPATH=src .venv/bin/python bench/rl_padding.py
    PYTHONPATH=src .venv/bin/python bench/rl_padding.py --rows 64 --width 512 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.models.layout import completion_token_logps
from posttrain.train.rl.trainer import minibatch_plan, row_widths

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rows", type=int, default=32)
parser.add_argument("--width", type=int, default=256, help="the longest completion (the batch's T)")
parser.add_argument("--long-share", type=float, default=0.25)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--hidden", type=int, default=256)
parser.add_argument("--layers", type=int, default=4)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

# --- model and rows
torch.manual_seed(0)
vocab, pad = 4096, 0
model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                     num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                                     max_position_embeddings=2048, pad_token_id=pad)).eval()
prompts = [torch.randint(1, vocab, (int(n),)).tolist() for n in torch.randint(20, 41, (args.rows,))]
lengths = torch.randint(8, 33, (args.rows,))
lengths[torch.rand(args.rows) < args.long_share] = args.width
lengths[0] = args.width   # the batch's longest
completion = torch.randint(1, vocab, (args.rows, args.width))
mask = (torch.arange(args.width) < lengths[:, None]).float()
completion[mask == 0] = pad
advantages = torch.randn(args.rows)
one_process = SimpleNamespace(rank=0, world=1, all_gather=lambda t: t)
config = SimpleNamespace(num_minibatches=1, batch_size=args.batch_size)
keep = torch.ones(args.rows, dtype=torch.bool)


def update(grouped: bool) -> tuple[float, int]:
    """Seconds and completion positions of one update's forwards and backwards."""
    plan = minibatch_plan(one_process, keep, config, seed=0, widths_B=row_widths(mask) if grouped else None)
    positions, start = 0, time.perf_counter()
    for micro in plan[0]:
        rows = micro["rows"]
        width = int(row_widths(mask[rows]).max()) if grouped else args.width
        logps, _ = completion_token_logps(model, [prompts[i] for i in rows.tolist()], completion[rows, :width], pad,
                                          mask[rows, :width])
        (-(logps * advantages[rows, None]).sum() / args.rows).backward()
        positions += len(rows) * width
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, positions


update(True)   # warm-up
results = {}
for name, grouped in (("full width (before)", False), ("grouped + trimmed (now)", True)):
    runs = [update(grouped) for _ in range(args.repeats)]
    results[name] = statistics.median(s for s, _ in runs), runs[0][1]
sampled = int(mask.sum())
print(f"{args.rows} rows, {sampled} sampled completion tokens, batch width {args.width}, micro-batches of "
      f"{args.batch_size}, {args.threads} thread(s)")
for name, (seconds, positions) in results.items():
    print(f"  {name:24s} {seconds:7.3f} s/update  {positions:6d} completion positions "
          f"({1 - sampled / positions:.0%} padding)")
(before_s, before_p), (now_s, now_p) = results.values()
print(f"  ratio now / before: time {now_s / before_s:.2f}, positions {now_p / before_p:.2f}")
