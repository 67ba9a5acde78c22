"""Held-out accuracy of a model on arith_tools_builtin's problems, greedy and sampled (T = 1), with
the episodes RL runs (the calculator, the fallback tools block, <tool_call> parsing) on the
colocated vLLM engine: `posttrain eval` runs the same episodes on transformers' generate, which
re-prefills the long tools block every turn and is many times slower on this CPU.

Usage: python episodes_eval.py MODEL_DIR OUT.jsonl [N]   (one line per item and decoding)
"""

import json
import os
import sys

from transformers import AutoTokenizer

from posttrain.data.builtin import arithmetic_tools
from posttrain.rewards import get_verifier
from posttrain.tools import EnvironmentPool, environment_factory
from posttrain.train.rl.multiturn import MultiTurnRollout
from posttrain.train.rl.rollout import VLLMRollout

MAX_TURNS, MAX_NEW_TOKENS = 3, 64   # arith_tools_builtin's own budget (evaluation/tasks.py)


def main(model_dir: str, out: str, n: int = 150):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = arithmetic_tools(split="test", n=n, seed=0)   # the task's items: arith_tools-0 … arith_tools-(n-1)
    make_environment, tools = environment_factory(tools=["calculator"])
    # float32, the trainer's dtype: the 4-step warm start moves weights by ~1e-4, below bfloat16's
    # resolution for most of them — in bfloat16 the same model makes no call at all
    backend = VLLMRollout(model_dir, tokenizer, dtype="float32", max_model_len=1024, seed=0)
    episodes = MultiTurnRollout(backend, tokenizer, make_environment, tools, EnvironmentPool(), MAX_TURNS,
                                2 * MAX_TURNS * MAX_NEW_TOKENS)
    verify = get_verifier("gsm8k")
    with open(out + ".part", "w") as f:   # renamed when complete: run.sh skips only finished evaluations
        for decoding in ("greedy", "sampled"):
            greedy = decoding == "greedy"
            # sampled: one episode per item at T = 1, seeded by the item's index (the same draw for every model)
            result = episodes.generate([[] for _ in rows], 1, MAX_NEW_TOKENS, temperature=1.0, greedy=greedy,
                                       rows=[{"messages": r["messages"], "prompt_ids": []} for r in rows],
                                       seeds=None if greedy else list(range(len(rows))))
            for i, (row, text, end) in enumerate(zip(rows, result.texts, result.end_reasons)):
                f.write(json.dumps({"id": f"arith_tools-{i}", "decoding": decoding, "ground_truth": row["ground_truth"],
                                    "final": text, "end": end, "calls": result.transcripts[i].count("<tool_call>"),
                                    "score": verify(text, row["ground_truth"]).score}) + "\n")
    os.replace(out + ".part", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
