#!/bin/bash
# dDPO on AI-feedback pairs (the Zephyr recipe, judge = the gsm8k verifier), from the tulu3-mini SFT model.
# SFT=runs/tulu3-mini/sft/model (the recipe's first stage; `make demo` writes it). Run from the repo root.
set -e
SFT=${SFT:-runs/tulu3-mini/sft/model}
OUT=${OUT:-runs/ddpo}
mkdir -p $OUT
# 300 verifiable prompts: 150 single-digit, 150 two-step word problems (train split)
python - <<'PY'
import json, os
from posttrain.data.sources import mix_sources
rows = mix_sources([{"source": "builtin:arithmetic_rlvr", "count": 150, "difficulty": [1]},
                    {"source": "builtin:arithmetic_rlvr", "count": 150, "difficulty": [3]}], seed=0)
out = os.environ.get("OUT", "runs/ddpo")
with open(f"{out}/prompts.jsonl", "w") as f:
    f.writelines(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in rows)
PY
# three policies answer every prompt; the verifier rates; best vs. a random worse one
posttrain data ai-feedback --prompts $OUT/prompts.jsonl --models $SFT $SFT smollm2-135m-instruct \
    --temperatures 0.6 1.0 0.8 --judge verifier --max-new-tokens 64 --batch-size 100 --out $OUT/pairs.jsonl
posttrain dpo model=$SFT out=$OUT/dpo data=$OUT/pairs.jsonl eval_data=[] loss_type=dpo_norm beta=5 \
    learning_rate=5e-6 max_steps=32 batch_size=4 max_length=256 max_prompt_length=128 warmup_ratio=0.1
for spec in arith_easy_builtin:40 arith_hard_builtin:80; do
  IFS=: read task tokens <<< "$spec"
  for model in $SFT $OUT/dpo/model; do
    posttrain eval --model $model --tasks $task --limit 200 --max-new-tokens $tokens --batch-size 200 \
        --out $OUT/eval/$(basename $(dirname $model))/$task
  done
done
