#!/usr/bin/env bash
# TRAM against AdamW and SAM under a domain shift (docs/finetune_methods.md, issue 26 b): full
# fine-tunes of the embedded model on difficulty-3 word problems (one template), evaluated
# in-domain (arith_hard_builtin) and shifted (arith_shift_builtin: other templates, larger
# numbers, both), with Wilson 95% intervals and exact paired sign tests on the same items.
# Usage: bash run.sh WORKDIR   (about 18 min alone on the 2-core CPU; steps that finished are skipped,
# an unfinished training starts over: overwrite=true)
set -euo pipefail
W=${1:-/tmp/tram-shift-exp}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W" && cd "$W"
# one OpenMP thread: on a shared 2-core machine oversubscribed threads are slower than one
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
N_EVAL=150   # items per eval set (the shifted set: 50 of each kind)

# --- 1. the three arms: same data, order, steps and learning rate; only the optimizer differs.
#        16 steps of 4 packed rows x 256 tokens (~8 problems a step), lr 3e-5 with no warm-up
#        (a warm-up of 10% is one step at lr 0 here). TRAM-θ0 (KL to the starting weights) with
#        tram_scale=0.1: at scale 1 the probe's radius grew 0.18 → 0.74 in 6 steps (15x SAM's 0.05);
#        0.1 keeps TRAM's radius in SAM's range while it still grows with the drift from θ0
train() {  # name, extra options
    [ -f "$1/model/config.json" ] || posttrain sft model=smollm2-135m-instruct \
        'data=[{source: builtin:arithmetic_sft, count: 400, difficulty: [3]}]' out="$1" \
        max_steps=16 batch_size=4 max_length=256 learning_rate=3e-5 warmup_ratio=0 seed=0 progress=false overwrite=true "${@:2}"
}
train adamw optimizer=adamw
train sam optimizer=sam sam_rho=0.05
train tram optimizer=tram tram_target=pretrained tram_scale=0.1

# --- 2. greedy evaluation, in-domain and shifted, of the base model and each arm (80 new tokens:
#        a trained answer is ~35; posttrain eval resumes a half-finished folder)
for arm in base adamw sam tram; do
    model=$([ "$arm" = base ] && echo smollm2-135m-instruct || echo "$arm/model")
    [ -f "ev-$arm/results.json" ] || posttrain eval --model "$model" --tasks arith_hard_builtin,arith_shift_builtin \
        --limit $N_EVAL --max-new-tokens 80 --batch-size 50 --threads 1 --out "ev-$arm"
done

# --- 3. intervals and paired comparisons on the same items
python - <<'PY' | tee summary.md
import json
from posttrain.evaluation.metrics import paired_sign_test, wilson_interval
from posttrain.evaluation.tasks import TaskContext, get_task

arms, sets = ["base", "adamw", "sam", "tram"], {"in-domain": "arith_hard_builtin", "shifted": "arith_shift_builtin"}
scores = {(a, s): {r["id"]: r["results"][0]["score"] for r in map(json.loads, open(f"ev-{a}/{t}/samples.jsonl"))}
          for a in arms for s, t in sets.items()}
kind = {x["id"]: x["shift"] for x in get_task("arith_shift_builtin").load(TaskContext(limit=len(scores["base", "shifted"])))}

def cell(values):
    k, n = int(sum(values)), len(values)
    lo, hi = wilson_interval(k, n)
    return f"{k} / {n} | {k / n:.3f} [{lo:.3f}, {hi:.3f}]"

print("| arm | eval set | correct / n | accuracy [95% Wilson] |\n|---|---|---|---|")
for a in arms:
    for s in sets:
        print(f"| {a} | {s} | {cell(list(scores[a, s].values()))} |")
print("\nShifted set by kind of shift:\n\n| arm | kind | correct / n | accuracy [95% Wilson] |\n|---|---|---|---|")
for a in arms:
    for k in ("phrasing", "numbers", "both"):
        print(f"| {a} | {k} | {cell([v for i, v in scores[a, 'shifted'].items() if kind[i] == k])} |")
print("\nPaired on the same items (exact sign test; wins = items the first arm gets right and the second wrong):\n")
print("| comparison | eval set | n | wins | losses | ties | p |\n|---|---|---|---|---|---|---|")
for first, second in [("tram", "adamw"), ("tram", "sam"), ("sam", "adamw"), ("adamw", "base")]:
    for s in sets:
        c = paired_sign_test(scores[second, s], scores[first, s])
        print(f"| {first} vs {second} | {s} | {c['n']} | {c['wins']} | {c['losses']} | {c['ties']} | {c['p']:.3g} |")
print("\nTraining (metrics.jsonl): token NLL of the first and the last step's batch at θ; ρ (the radius used) and TRAM's d are means over steps 2-16.\n")
print("| arm | first → last token NLL | mean ρ used | mean TRAM d | seconds |\n|---|---|---|---|---|")
for a in arms[1:]:
    m = [r for r in map(json.loads, open(f"{a}/metrics.jsonl")) if "loss" in r]
    mean = lambda key: (f"{sum(r[key] for r in m[1:]) / len(m[1:]):.4f}" if key in m[-1] else "—")
    print(f"| {a} | {m[0]['token_nll']:.3f} → {m[-1]['token_nll']:.3f} | {mean('sam_rho')} | {mean('tram_divergence')} | {m[-1]['elapsed_s']:.0f} |")
PY
cp summary.md "$HERE/"
