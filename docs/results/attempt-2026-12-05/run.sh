#!/usr/bin/env bash
# ATTEMPT against a plain soft prompt of the same size (docs/finetune_methods.md, issue 26 a): two
# source prompts on built-in tasks (arithmetic of difficulty 1-2; IFEval-style instructions), then,
# on a third task held out from both (difficulty-3 word problems), ATTEMPT's target prompt +
# attention over the sources against a plain 20-token prompt with the same data, steps and lr.
# Greedy accuracy on arith_hard_builtin, Wilson 95% intervals, exact paired sign tests.
# Usage: bash run.sh WORKDIR   (about 17 min alone on the 2-core CPU; steps that finished are skipped,
# an unfinished training starts over: overwrite=true)
set -euo pipefail
W=${1:-/tmp/attempt-exp}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W" && cd "$W"
# one OpenMP thread: on a shared 2-core machine oversubscribed threads are slower than one
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
N_EVAL=200     # target-task test items
SRC_STEPS=40   # per source prompt
LR=3e-2        # every prompt; the LM stays frozen throughout

prompt() {  # out, data, steps, extra options: a 20-token soft prompt, batch 4, no packing (one prompt per row)
    [ -f "$1/model/adapter_config.json" ] || [ -f "$1/model/attempt_config.json" ] || \
        posttrain sft model=smollm2-135m-instruct num_virtual_tokens=20 packing=false max_length=192 \
        "data=$2" out="$1" max_steps="$3" batch_size=4 learning_rate=$LR warmup_ratio=0 seed=0 progress=false overwrite=true "${@:4}"
}
# --- 1. source prompts on two built-in tasks
prompt src-arith '[{source: builtin:arithmetic_sft, count: 400, difficulty: [1, 2]}]' $SRC_STEPS adapter=prompt
prompt src-ifeval '[{source: builtin:ifeval_sft, count: 400}]' $SRC_STEPS adapter=prompt
# --- 2. the held-out target task (difficulty 3): two arms with the same data order and lr, at two
#        budgets — 10 steps (40 examples), where a plain prompt still rambled (0/24 in the probe)
#        and a start from the sources can matter, and 30 steps (120), where it reached 15/24
TARGET='[{source: builtin:arithmetic_sft, count: 400, difficulty: [3]}]'
for steps in 10 30; do
    prompt prompt-$steps "$TARGET" $steps adapter=prompt
    prompt attempt-$steps "$TARGET" $steps adapter=attempt source_prompts=[src-arith/model,src-ifeval/model]
done

# --- 3. greedy accuracy on the target's test split: the base model, the arithmetic source alone
#        (what transfers with no target training), and the arms
ARMS="base src-arith prompt-10 attempt-10 prompt-30 attempt-30"
for arm in $ARMS; do
    model=$([ "$arm" = base ] && echo smollm2-135m-instruct || echo "$arm/model")
    [ -f "ev-$arm/results.json" ] || posttrain eval --model "$model" --tasks arith_hard_builtin \
        --limit $N_EVAL --max-new-tokens 80 --batch-size 50 --threads 1 --out "ev-$arm"
done

# --- 4. intervals, paired comparisons, ATTEMPT's attention
python - <<'PY' | tee summary.md
import json
from posttrain.evaluation.metrics import paired_sign_test, wilson_interval

arms = ["base", "src-arith", "prompt-10", "attempt-10", "prompt-30", "attempt-30"]
scores = {a: {r["id"]: r["results"][0]["score"] for r in map(json.loads, open(f"ev-{a}/arith_hard_builtin/samples.jsonl"))}
          for a in arms}
print("Target task arith_hard_builtin (greedy, 80 new tokens):\n")
print("| arm | correct / n | accuracy [95% Wilson] |\n|---|---|---|")
for a in arms:
    k, n = int(sum(scores[a].values())), len(scores[a])
    lo, hi = wilson_interval(k, n)
    print(f"| {a} | {k} / {n} | {k / n:.3f} [{lo:.3f}, {hi:.3f}] |")
print("\nPaired on the same items (exact sign test; wins = items the first arm gets right and the second wrong):\n")
print("| comparison | n | wins | losses | ties | p |\n|---|---|---|---|---|---|")
for first, second in [("attempt-10", "prompt-10"), ("attempt-30", "prompt-30"), ("attempt-10", "src-arith"), ("attempt-30", "src-arith"),
                      ("prompt-10", "base"), ("prompt-30", "base"), ("src-arith", "base")]:
    c = paired_sign_test(scores[second], scores[first])
    print(f"| {first} vs {second} | {c['n']} | {c['wins']} | {c['losses']} | {c['ties']} | {c['p']:.3g} |")
print("\nTraining (metrics.jsonl; token NLL averaged over the first and the last 5 steps (fewer if the run is short)):\n")
print("| run | steps | token NLL first → last | seconds |\n|---|---|---|---|")
for a in ["src-arith", "src-ifeval", "prompt-10", "attempt-10", "prompt-30", "attempt-30"]:
    m = [r for r in map(json.loads, open(f"{a}/metrics.jsonl")) if "loss" in r]
    nll = lambda part: sum(r["token_nll"] for r in part) / len(part)
    print(f"| {a} | {len(m)} | {nll(m[:5]):.3f} → {nll(m[-5:]):.3f} | {m[-1]['elapsed_s']:.0f} |")
print("\nATTEMPT's attention (mean over the step's instances), first and last step of each run:\n")
for run in ("attempt-10", "attempt-30"):
    m = [r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if "loss" in r]
    keys = sorted(k for k in m[-1] if k.startswith("attention/"))
    if run == "attempt-10":
        print("| run | step | " + " | ".join(k.split("/", 1)[1] for k in keys) + " |\n|---|---|" + "---|" * len(keys))
    for r in (m[0], m[-1]):
        print(f"| {run} | {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
PY
cp summary.md "$HERE/"
