#!/usr/bin/env bash
# GRUE-style PPO experiment (issue 24): PPO on the embedded model with ROUGE-L as the reward, on
# the built-in summary_mini task; held-out ROUGE-L on its first 150 test paragraphs before and
# after (greedy), bootstrap 95% intervals and the exact paired sign test.
# Usage: bash run.sh WORKDIR   (about 10 min on an idle 2-core CPU, ~20 min beside a test run)
set -euo pipefail
W=${1:-/tmp/grue-exp}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W" && cd "$W"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# torch's own thread count on an idle machine; on a shared one set OMP_NUM_THREADS=1 (oversubscribed
# threads are slower than one there)
THREADS=${OMP_NUM_THREADS:+--threads $OMP_NUM_THREADS}
# the PPO step size: 1e-5 x 12 by default; the probe's point, 2e-5 x 6, is the second arm (README)
PPO_LR=${PPO_LR:-1e-5} PPO_STEPS=${PPO_STEPS:-12}
N=150   # held-out paragraphs: summary_mini's test split (hash-disjoint from the training rows)

# --- 1. held-out ROUGE-L of the starting model (greedy, the task's 48-token budget)
[ -f eval-start/results.json ] || posttrain eval --model smollm2-135m-instruct --tasks summary_mini \
    --limit $N $THREADS --out eval-start

# --- 2. PPO: ROUGE-L F1 against the reference summary is the whole reward, the k1 KL penalty
#        (β = 0.05) keeps the text near the starting model's; T = 0.7 because T = 1 samples of this
#        model are mostly off-topic (probe: 0.16 vs 0.52 mean reward at step 1); lr x steps = 1.2e-4,
#        the probe's good point (2e-5 x 6), in half-size steps: 2e-5 x 14 drifted (README)
[ -f ppo/model/config.json ] || posttrain ppo model=smollm2-135m-instruct \
    'data=[{source: builtin:summary_mini_rlvr, n: 400}]' eval_data=[] 'reward=[{verifier: rouge}]' \
    max_steps=$PPO_STEPS prompts_per_step=8 group_size=1 max_new_tokens=48 temperature=0.7 \
    learning_rate=$PPO_LR beta=0.05 seed=0 save_steps=4 progress=false save_samples=8 out=ppo

# --- 3. held-out ROUGE-L of the trained model on the same items
[ -f eval-ppo/results.json ] || posttrain eval --model ppo/model --tasks summary_mini \
    --limit $N $THREADS --out eval-ppo

# --- 4. intervals, the paired comparison and the training curve
python - <<'PY' | tee summary.md
import json
from posttrain.evaluation.metrics import bootstrap_ci, paired_sign_test

def load(run):
    rows = [json.loads(l) for l in open(f"{run}/summary_mini/samples.jsonl")]
    return {r["id"]: r for r in rows}

runs = {"start": load("eval-start"), "ppo": load("eval-ppo")}
score = {name: {k: r["results"][0]["score"] for k, r in rows.items()} for name, rows in runs.items()}
print("Held-out summary_mini (greedy), ROUGE-L F1 per item; 95% percentile bootstrap (10 000 resamples):\n")
# the day is only in the paragraph's second (news) sentence: a summary that names it kept the news,
# one that does not stopped at the first sentence (the cheap 0.63 mode the probes fell into)
print("| model | n | mean ROUGE-L [95% CI] | mean words | names the day |\n|---|---|---|---|---|")
ci = {}
for name, rows in runs.items():
    m, lo, hi = ci[name] = bootstrap_ci(list(score[name].values()), n_resamples=10000)
    words = sum(len(r["completions"][0].split()) for r in rows.values()) / len(rows)
    day = sum(r["ground_truth"].rstrip(".").split()[-1] in r["completions"][0] for r in rows.values())
    print(f"| {name} | {len(rows)} | {m:.3f} [{lo:.3f}, {hi:.3f}] | {words:.1f} | {day} / {len(rows)} |")
c = paired_sign_test(score["start"], score["ppo"])
diff = [score["ppo"][k] - score["start"][k] for k in score["start"] if k in score["ppo"]]
d, dlo, dhi = bootstrap_ci(diff, n_resamples=10000)
print(f"\nPaired on the same items, start → ppo: n {c['n']}, wins {c['wins']}, losses {c['losses']}, "
      f"ties {c['ties']}, exact sign test p = {c['p']:.3g}; mean difference {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}].")
print(f"PPO's mean {'lies above' if ci['ppo'][0] > ci['start'][2] else 'does not lie above'} "
      f"the start's interval (upper end {ci['start'][2]:.3f}).")
train = [r for r in map(json.loads, open("ppo/metrics.jsonl")) if "reward_mean" in r]
print("\nPPO steps (8 sampled completions a step, T = 0.7):\n")
print("| step | reward mean | reward std | KL / token | response tokens | explained variance |\n|---|---|---|---|---|---|")
for r in train:
    print(f"| {r['step']} | {r['reward_mean']:.3f} | {r['reward_std']:.3f} | {r.get('kl', float('nan')):.3f} | "
          f"{r['response_length']:.1f} | {r.get('explained_variance', float('nan')):.2f} |")
print("\nFirst three items (start → ppo):\n")
for k in sorted(runs["start"], key=lambda k: int(k.rsplit("-", 1)[1]))[:3]:
    print(f"- `{k}`: {runs['start'][k]['completions'][0]!r} ({score['start'][k]:.2f}) → "
          f"{runs['ppo'][k]['completions'][0]!r} ({score['ppo'][k]:.2f})")
PY
cp summary.md "$HERE/"
cp ppo/reward_report.md "$HERE/reward_report.md"
