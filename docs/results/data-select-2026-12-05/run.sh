#!/usr/bin/env bash
# Data selection experiment (docs/data_selection.md): SFT of the embedded model on k = 100 pool rows
# chosen by cross-task nearest neighbours of 50 unlabelled target prompts, against 100 random pool
# rows; both evaluated on the target task (arith_hard_builtin, test split) with 95% intervals and a
# paired sign test. Usage: bash run.sh WORKDIR   (about 30 min on a shared 2-core CPU)
set -euo pipefail
W=${1:-/tmp/data-select-exp}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W" && cd "$W"

# --- 1. a multitask pool (1200 SFT rows, shuffled) and 50 unlabelled target prompts
python - <<'PY'
import json, random
from posttrain.data.sources import load_source
pool = (load_source("builtin:arithmetic_sft", n=400, seed=1, difficulty=[1])
        + load_source("builtin:arithmetic_sft", n=400, seed=2, difficulty=[2])
        + load_source("builtin:arithmetic_sft", n=100, seed=3, difficulty=[3])
        + [dict(r, difficulty="ifeval") for r in load_source("builtin:ifeval_sft", n=300, seed=4)])
random.Random(0).shuffle(pool)
with open("pool.jsonl", "w") as f:
    for i, row in enumerate(pool, 1):
        f.write(json.dumps({"id": f"pool-{i}", **row}) + "\n")
# the target task's prompts only (train split, another seed): no answers are used
target = load_source("builtin:arithmetic_rlvr", n=50, seed=7, difficulty=[3])
with open("target.jsonl", "w") as f:
    for row in target:
        f.write(json.dumps({"prompt": row["messages"][0]["content"]}) + "\n")
random_rows = random.Random(1).sample(open("pool.jsonl").read().splitlines(), 100)
open("random.jsonl", "w").write("\n".join(random_rows) + "\n")
PY

# --- 2. selection
posttrain data select --pool pool.jsonl --target target.jsonl --k 100 --out selected.jsonl

# --- 3. SFT on each (the tulu3-mini SFT settings; 25 steps × 4 rows = one epoch of 100 rows)
for arm in selected random; do
  [ -f "sft-$arm/model/config.json" ] || posttrain sft model=smollm2-135m-instruct data="$arm.jsonl" out="sft-$arm" \
      max_steps=25 batch_size=4 max_length=256 learning_rate=2e-5 loss_reduction=sum warmup_ratio=0.1 seed=0 progress=false
done

# --- 4. evaluation on the target task (greedy, 100 test items, 95% intervals)
for arm in selected random; do
  posttrain eval --model "sft-$arm/model" --tasks arith_hard_builtin --limit 100 --max-new-tokens 80 \
      --batch-size 100 --threads 2 --out "eval-$arm"
done

# --- 5. what was selected, and the paired comparison
python - <<'PY' | tee summary.md
import collections, json
from posttrain.reports.recipe import paired_comparisons
def mix(path):
    return dict(collections.Counter(str(json.loads(l)["difficulty"]) for l in open(path)))
print("| arm | rows by pool part (difficulty 1/2/3 arithmetic, ifeval) |\n|---|---|")
for arm in ("selected", "random"):
    print(f"| {arm} | {mix(arm + '.jsonl')} |")
res = {arm: json.load(open(f"eval-{arm}/results.json")) for arm in ("random", "selected")}
print("\n| arm | task | metric | n | value [95% interval] |\n|---|---|---|---|---|")
for arm, r in res.items():
    for row in r["rows"]:
        print(f"| {arm} | {row['task']} | {row['metric']} | {row['n']} | {row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}] |")
print("\nPaired (same items), random → selected:\n")
for c in paired_comparisons(res):
    print(f"- {c['task']} {c['metric']}: n {c['n']}, wins {c['wins']}, losses {c['losses']}, ties {c['ties']}, p = {c['p']:.3g}")
PY
cp summary.md selected.selection.jsonl "$HERE/" 2>/dev/null || true
for arm in selected random; do cp "eval-$arm/results.md" "$HERE/eval-$arm.md"; done
