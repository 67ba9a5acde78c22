"""The evaluation runner: tasks in, per-sample jsonl and an aggregate table out.

    from posttrain.evaluation.runner import evaluate
    result = evaluate("smollm2-135m-instruct", "dev", "runs/eval", limit=32)
    result["rows"]   # [{"task": "arith_builtin", "metric": "accuracy", "value": 0.31, "n": 32,
                     #   "low": 0.18, "high": 0.48, "tag": "dev"}, ...]

For each task, in order: load its samples (first ``limit``), drop the ones already in
``OUT/<task>/samples.jsonl``, run the rest in chunks of ``batch_size`` prompts (generate →
score with the task's verifier in a thread pool → append one json line per sample), then
aggregate every sample of the file into metrics with a 95% interval
(:mod:`posttrain.evaluation.metrics`: Wilson for 0/1 values, the normal approximation otherwise).

Resuming: a re-run with the same settings regenerates nothing that finished; the settings a file
was written with are kept in ``OUT/<task>/settings.json`` and a re-run with different ones (another
model, token budget, sampling) is refused rather than mixed (``overwrite=True`` starts over).

Suites skip what cannot run here (a hub set while offline, a win rate without ``judge``) and
say why in the table; tasks named one by one are errors instead.

Outputs: ``OUT/results.json`` (everything), ``OUT/results.md`` (the table), and
``OUT/<task>/samples.jsonl`` (prompt, completions, scores, extracted answers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from posttrain.config import ConfigError
from posttrain.evaluation.metrics import mean_confidence_interval, pass_at_k, wilson_interval
from posttrain.evaluation.tasks import TASKS, Task, TaskContext, get_task, resolve_tasks

__all__ = ["evaluate", "aggregate", "score_completion", "format_markdown", "print_results"]

LEVEL = 0.95


# ---------------------------------------------------------------------------------------------
# Scoring one completion (pure; runs in threads)


def score_completion(scorer: str, completion: str, sample: dict) -> dict:
    """``{"score": float in [0, 1], "extracted": ..., ...}`` for one completion. ``ifeval`` adds
    the strict and loose per-instruction results; a verifier error scores 0 with ``error``."""
    from posttrain.rewards import get_verifier

    gt = sample.get("ground_truth")
    try:
        if scorer == "exact_match":
            hit = " ".join(completion.split()).lower() == " ".join(str(gt).split()).lower()
            return {"score": float(hit), "extracted": completion}
        if scorer == "ifeval":
            strict = get_verifier("ifeval")(completion, gt)
            loose = get_verifier("ifeval_loose")(completion, gt)
            return {"score": strict.score, "strict": strict.details["follow_instruction_list"],
                    "loose": loose.details["follow_instruction_list"]}
        if scorer == "row":   # the sample names its own verifier (task verifier_rows)
            scorer = sample["verifier"]
        result = get_verifier(scorer)(completion, gt)
        extracted = result.extracted if isinstance(result.extracted, (str, int, float, type(None))) else str(result.extracted)
        return {"score": result.score, "extracted": extracted if scorer != "code" else None}
    except Exception as e:  # a bad ground truth must not stop the run; it is counted and shown
        return {"score": 0.0, "error": f"{type(e).__name__}: {e}"[:300]}


# ---------------------------------------------------------------------------------------------
# Aggregation: records of one task -> metric rows


def _row(metric: str, values: list[float]) -> dict:
    mean, low, high = mean_confidence_interval(values, LEVEL)
    return {"metric": metric, "value": mean, "n": len(values), "low": low, "high": high}


def _share(metric: str, hits: list[bool]) -> dict:
    low, high = wilson_interval(sum(hits), len(hits), LEVEL)
    return {"metric": metric, "value": sum(hits) / len(hits), "n": len(hits), "low": low, "high": high}


def item_values(task: Task, records: list[dict]) -> dict[str, list[float]]:
    """Each per-item metric of a task → one value per record, in record order (what a paired
    comparison of two runs on the same items compares; ``aggregate`` averages them).

    - ``accuracy``: the mean score of the sample's completions (``rm_accuracy`` / ``loglik``: 1.0
      for a correct sample); named after the metric for a graded scorer (``rouge``, ``concept_coverage``) and
      ``mean_score`` for ``verifier_rows`` (:func:`score_metric`).
    - ``ifeval``: prompt-level strict and loose (1.0 when every instruction is followed).
    - ``pass_at_k``: unbiased pass@k (Chen et al. 2021, eq. 1) with c = completions scoring 1.0,
      for every k <= n.
    - ``winrate``: win 1, tie 0.5, loss 0 (a reward-model judge); P(win) (an LM judge, which
      compares the two answers in both orders).
    """
    if task.kind in ("rm_accuracy", "loglik"):
        return {"accuracy": [float(bool(r["correct"])) for r in records]}
    if task.metric == "winrate":
        return {"win_rate": [r["win"] for r in records]}
    if task.metric == "ifeval":
        first = [r["results"][0] for r in records]
        return {f"prompt_level_{kind}": [float(all(x.get(kind, [False]))) for x in first] for kind in ("strict", "loose")}
    if task.metric == "pass_at_k":
        n = min(len(r["results"]) for r in records)
        counts = [(len(r["results"]), sum(x["score"] == 1.0 for x in r["results"])) for r in records]
        return {f"pass@{k}": [pass_at_k(nn, c, k) for nn, c in counts] for k in sorted(set(task.ks) | {1}) if k <= n}
    return {score_metric(task): [sum(x["score"] for x in r["results"]) / len(r["results"]) for r in records]}


def score_metric(task: Task) -> str:
    """The name of a mean verifier score: ``accuracy`` for a pass/fail check, the metric's own name
    for a graded one (a mean ROUGE-L or concept coverage is not an accuracy), ``mean_score`` for
    per-row verifiers."""
    from posttrain.rewards import get_verifier

    if task.scorer == "row":
        return "mean_score"
    verifier = get_verifier(task.scorer) if task.scorer not in (None, "exact_match") else None
    if verifier is not None and (verifier.similarity or verifier.partial_credit):
        return task.scorer
    return "accuracy"


def aggregate(task: Task, records: list[dict]) -> list[dict]:
    """Metric rows of a task (the first is the headline number): the mean of each of
    :func:`item_values` with its 95% interval (Wilson for 0/1 values), and for ``ifeval`` also
    IFEval's instruction-level numbers (share of all instructions; the interval treats them as
    independent, which they are not quite: a prompt holds 1-3)."""
    if not records:
        return []
    rows = [_row(metric, values) for metric, values in item_values(task, records).items()]
    if task.metric == "ifeval":
        first = [r["results"][0] for r in records]
        strict, loose = rows
        rows = [strict, _share("inst_level_strict", [b for x in first for b in x.get("strict", [False])]),
                loose, _share("inst_level_loose", [b for x in first for b in x.get("loose", [False])])]
    return rows


# ---------------------------------------------------------------------------------------------
# The per-task sample file


class SampleStore:
    """``OUT/<task>/samples.jsonl`` + ``settings.json``; appends are flushed line by line, so a
    killed run keeps every finished sample (a torn last line is dropped on reload)."""

    def __init__(self, folder: Path, settings: dict, overwrite: bool = False):
        self.folder, self.path = folder, folder / "samples.jsonl"
        settings_path = folder / "settings.json"
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if settings_path.exists() and self.path.exists():
            old = json.loads(settings_path.read_text())
            if old != settings:
                diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
                raise ConfigError(f"{self.path} was written with other settings {diff} (old, new); "
                                  f"use another --out folder or --overwrite")
        settings_path.write_text(json.dumps(settings, indent=2) + "\n")

    def load(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                done[record["id"]] = record
        return done

    def append(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()


# ---------------------------------------------------------------------------------------------
# Running one task


def _chunk_seed(seed: int, task: str, first_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{task}:{first_id}".encode()).hexdigest()[:8], 16)


class _Run:
    """Shared state of one ``evaluate`` call: models are loaded on first use."""

    def __init__(self, model, tokenizer, batch_size, seed, generator, predictions, judge, reference_model,
                 reward_model, workers, log):
        self.model_spec, self.tokenizer = model, tokenizer
        self.batch_size, self.seed, self.workers, self.log = batch_size, seed, workers, log
        self._generator, self._predictions = generator, predictions
        self.judge_spec, self.reference_spec, self.reward_spec = judge, reference_model, reward_model
        self._scorers: dict[str, Any] = {}
        self._reference = None
        self._lm_judge = None

    @property
    def model_id(self) -> str:
        if isinstance(self.model_spec, str):
            return self.model_spec
        if isinstance(self.model_spec, tuple):
            return str(getattr(self.model_spec[0], "name_or_path", "") or type(self.model_spec[0]).__name__)
        if self._predictions is not None:
            return f"predictions:{self._predictions}"
        return type(self._generator).__name__ if self._generator is not None else "none"

    def generator(self):
        if self._generator is None:
            if self._predictions is not None:
                from posttrain.evaluation.generation import PredictionsGenerator

                self._generator = PredictionsGenerator(self._predictions)
            else:
                self._generator = self._load_generator(self.model_spec, self.tokenizer)
        return self._generator

    def _load_generator(self, spec, tokenizer=None):
        from posttrain.evaluation.generation import HFGenerator

        if spec is None:
            raise ConfigError("no model given: pass --model (or --predictions FILE)")
        if isinstance(spec, tuple):
            model, tokenizer = spec
        else:
            from posttrain.models import load_model, load_tokenizer

            t0 = time.perf_counter()
            tokenizer = tokenizer or load_tokenizer(spec)
            model = load_model(spec)
            self.log(f"loaded {spec} in {time.perf_counter() - t0:.1f}s")
        return HFGenerator(model, tokenizer, batch_size=self.batch_size)

    def reference(self):
        if self._reference is None:
            self._reference = self._load_generator(self.reference_spec)
        return self._reference

    def scorer(self, spec: str):
        if spec not in self._scorers:
            try:
                from posttrain.rewards.reward_model import RewardModelScorer
            except ImportError as e:
                raise ConfigError(f"reward-model scoring needs posttrain.rewards.reward_model, which could not be "
                                  f"imported ({e})") from None
            self._scorers[spec] = RewardModelScorer(spec, batch_size=self.batch_size)
        return self._scorers[spec]

    def lm_judge(self):
        """The LM judge ``judge_spec`` names (posttrain.judges); a local judge on the evaluated
        model reuses its loaded weights."""
        if self._lm_judge is None:
            from posttrain.judges import load_judge

            loaded = {}
            gen = self._generator
            if isinstance(self.model_spec, str) and hasattr(gen, "model") and hasattr(gen, "tokenizer"):
                loaded[self.model_spec] = (gen.model, gen.tokenizer)
            self._lm_judge = load_judge(self.judge_spec, loaded_models=loaded, batch_size=self.batch_size)
        return self._lm_judge

    def complete(self, gen, task_name: str, chunk: list[dict], settings: dict) -> list[list[str]]:
        if hasattr(gen, "lookup"):  # replayed predictions
            return [gen.lookup(task_name, s["id"], settings["num_samples"]) for s in chunk]
        return gen.generate([s["messages"] for s in chunk], max_new_tokens=settings["max_new_tokens"],
                            temperature=settings["temperature"], top_p=settings["top_p"],
                            num_samples=settings["num_samples"],
                            seed=_chunk_seed(self.seed, task_name, chunk[0]["id"]))


def _missing_needs(task: Task, run: _Run, samples: list[dict] | None = None) -> str | None:
    if "judge" in task.needs and not run.judge_spec:
        return "needs --judge (a reward model, or an LM judge: local:MODEL, URL@MODEL)"
    if "reference" in task.needs and not run.reference_spec:
        return "needs --reference-model (the baseline)"
    if "reward_model" in task.needs and not run.reward_spec:
        return "needs --reward-model (the reward model to evaluate)"
    return None


def _settings(task: Task, run: _Run, max_new_tokens, num_samples, temperature, data_files) -> dict:
    n = num_samples or task.num_samples
    temp = temperature if temperature is not None else (task.temperature if n == 1 else max(task.temperature, 0.8))
    if n > 1 and temp == 0:
        raise ConfigError(f"task {task.name}: num_samples={n} needs temperature > 0")
    settings = {"task": task.name, "kind": task.kind, "model": run.model_id,
                "max_new_tokens": max_new_tokens or task.max_new_tokens, "num_samples": n,
                "temperature": temp, "top_p": 1.0 if temp == 0 else 0.95,
                "data": data_files.get(task.name) or task.hub or "builtin"}
    if temp > 0:
        settings["seed"] = run.seed
    if task.kind == "tools":
        settings.update(tools=list(task.tools), max_turns=task.max_turns)
    if task.kind == "winrate":
        settings["judge"] = run.judge_spec
        settings["reference_model"] = run.reference_spec
    if task.kind == "rm_accuracy":
        settings = {"task": task.name, "kind": task.kind, "reward_model": run.reward_spec, "data": settings["data"]}
    return settings


def _process_generate(run: _Run, task: Task, chunk: list[dict], settings: dict, pool) -> list[dict]:
    completions = run.complete(run.generator(), task.name, chunk, settings)
    jobs = [(c, s) for s, cs in zip(chunk, completions) for c in cs]
    scored = list(pool.map(lambda job: score_completion(task.scorer, job[0], job[1]), jobs))
    out, i = [], 0
    for s, cs in zip(chunk, completions):
        results = scored[i:i + len(cs)]
        i += len(cs)
        out.append({"id": s["id"], "prompt": s["messages"][-1]["content"], "ground_truth": s.get("ground_truth"),
                    "completions": cs, "results": results})
    return out


def _process_loglik(run: _Run, task: Task, chunk: list[dict], settings: dict, pool) -> list[dict]:
    requests = [(s["messages"], c) for s in chunk for c in s["choices"]]
    lls = run.generator().loglikelihood(requests)
    out, i = [], 0
    for s in chunk:
        scores = lls[i:i + len(s["choices"])]
        i += len(s["choices"])
        pred = max(range(len(scores)), key=scores.__getitem__)
        out.append({"id": s["id"], "prompt": s["prompt_text"], "choices": s["choices"], "logprobs": scores,
                    "pred": pred, "label": s["label"], "correct": pred == s["label"]})
    return out


def _process_rm(run: _Run, task: Task, chunk: list[dict], settings: dict, pool) -> list[dict]:
    scorer = run.scorer(run.reward_spec)
    prompts = [s["messages"] for s in chunk]
    chosen = scorer.score(prompts, [s["chosen"] for s in chunk])
    rejected = scorer.score(prompts, [s["rejected"] for s in chunk])
    return [{"id": s["id"], "prompt": s["prompt_text"], "subset": s.get("subset"), "chosen_score": c,
             "rejected_score": r, "correct": c > r} for s, c, r in zip(chunk, chosen, rejected)]


def _process_winrate(run: _Run, task: Task, chunk: list[dict], settings: dict, pool) -> list[dict]:
    one = {**settings, "num_samples": 1}
    outputs = [cs[0] for cs in run.complete(run.generator(), task.name, chunk, one)]
    if run.reference_spec:
        references = [cs[0] for cs in run.complete(run.reference(), task.name, chunk, one)]
    else:
        references = [s["reference"] for s in chunk]
    prompts = [s["messages"] for s in chunk]
    from posttrain.judges import is_judge_spec

    if is_judge_spec(run.judge_spec):
        # an LM judge compares the two answers side by side, both orders (AlpacaEval-style); the
        # win value is P(model's answer better), a tie (0.5) when no verdict could be read
        prefs = run.lm_judge().compare_many(prompts, outputs, references)
        return [{"id": s["id"], "prompt": s["prompt_text"], "completion": o, "reference": ref,
                 "judge_preference": None if math.isnan(p) else p, "win": 0.5 if math.isnan(p) else p}
                for s, o, ref, p in zip(chunk, outputs, references, prefs)]
    scorer = run.scorer(run.judge_spec)
    mine, theirs = scorer.score(prompts, outputs), scorer.score(prompts, references)
    return [{"id": s["id"], "prompt": s["prompt_text"], "completion": o, "reference": ref, "score": a,
             "reference_score": b, "win": 1.0 if a > b else 0.5 if a == b else 0.0}
            for s, o, ref, a, b in zip(chunk, outputs, references, mine, theirs)]


def _process_tools(run: _Run, task: Task, chunk: list[dict], settings: dict, pool) -> list[dict]:
    """Tool-use episodes (``HFGenerator.episodes``), the final turn scored; replayed predictions
    are taken as final turns."""
    gen = run.generator()
    if hasattr(gen, "lookup"):
        return _process_generate(run, task, chunk, settings, pool)
    episodes = gen.episodes([s["messages"] for s in chunk], task.tools, task.max_turns,
                            max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                            top_p=settings["top_p"], num_samples=settings["num_samples"],
                            seed=_chunk_seed(run.seed, task.name, chunk[0]["id"]))
    out = []
    for s, sample_episodes in zip(chunk, episodes):
        finals = [e["final"] for e in sample_episodes]
        results = list(pool.map(lambda c: score_completion(task.scorer, c, s), finals))
        out.append({"id": s["id"], "prompt": s["messages"][-1]["content"], "ground_truth": s.get("ground_truth"),
                    "completions": finals, "episodes": [e["episode"] for e in sample_episodes],
                    "ends": [e["end"] for e in sample_episodes], "results": results})
    return out


PROCESSORS: dict[str, Callable] = {"generate": _process_generate, "loglik": _process_loglik,
                                   "rm_accuracy": _process_rm, "winrate": _process_winrate, "tools": _process_tools}


def _run_task(run: _Run, task: Task, out_dir: Path, limit, settings_args, data_files, overwrite) -> dict:
    t0 = time.perf_counter()
    lim = limit if limit is not None else task.limit
    samples = task.load(TaskContext(data_files=data_files, limit=lim))
    samples = samples[:lim] if lim is not None else samples
    settings = _settings(task, run, *settings_args, data_files)
    store = SampleStore(out_dir / task.name, settings, overwrite)
    done = store.load()
    # shortest prompts first: a batch then holds prompts of similar length (less padding)
    todo = sorted((s for s in samples if s["id"] not in done), key=lambda s: len(s["prompt_text"]))
    run.log(f"[{task.name}] {len(samples)} samples, {len(samples) - len(todo)} already done")
    process = PROCESSORS[task.kind]
    with ThreadPoolExecutor(max_workers=max(run.workers, 1)) as pool:
        for start in range(0, len(todo), run.batch_size):
            chunk = todo[start:start + run.batch_size]
            records = process(run, task, chunk, settings, pool)
            store.append(records)
            done.update((r["id"], r) for r in records)
            run.log(f"[{task.name}] {len(samples) - len(todo) + start + len(chunk)}/{len(samples)} "
                    f"({time.perf_counter() - t0:.0f}s)")
    records = [done[s["id"]] for s in samples]
    errors = sum(1 for r in records for x in r.get("results", []) if "error" in x)
    return {"status": "ok", "tag": task.tag, "description": task.description, "n": len(records),
            "generated": len(todo), "reused": len(samples) - len(todo), "errors": errors,
            "seconds": round(time.perf_counter() - t0, 1), "settings": settings,
            "metrics": aggregate(task, records), "samples_file": str(store.path)}


# ---------------------------------------------------------------------------------------------
# Entry point


def evaluate(
    model: str | tuple | None,
    tasks: str | list[str] | None = "dev",
    out_dir: str | Path = "runs/eval",
    limit: int | None = None,
    *,
    tokenizer=None,
    batch_size: int = 16,
    seed: int = 0,
    max_new_tokens: int | None = None,
    num_samples: int | None = None,
    temperature: float | None = None,
    data_files: dict[str, str] | None = None,
    judge: str | None = None,
    reference_model: str | None = None,
    reward_model: str | None = None,
    predictions: str | None = None,
    generator=None,
    harness: str | None = None,
    harness_tasks: list[str] | None = None,
    workers: int = 2,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate ``model`` (a model spec, or a ``(model, tokenizer)`` pair; None with
    ``predictions`` or ``generator``) on ``tasks`` (a suite name ``dev``/``unseen``/``all``, a
    comma list or a list of names) and write the results under ``out_dir``.

    ``limit`` caps the samples per task (default: each task's own limit); ``max_new_tokens``,
    ``num_samples`` and ``temperature`` override the task defaults (``num_samples > 1`` samples at
    temperature 0.8 unless given). ``data_files`` maps a task to a local file in its hub schema.
    ``judge`` / ``reference_model`` / ``reward_model`` enable the win-rate and reward-model tasks.
    ``predictions`` (jsonl of task, id, completion) or ``generator`` (an object with
    ``generate``/``loglikelihood``, see :mod:`posttrain.evaluation.generation`) replace the model.
    ``harness="lm_eval"`` runs ``harness_tasks`` through lm-evaluation-harness and merges its rows.

    Returns ``{"model", "out_dir", "seconds", "tasks": {name: {...}}, "rows": [...]}`` and writes
    it to ``results.json`` and ``results.md``.
    """
    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    data_files = dict(data_files or {})
    from posttrain.data.formats import DataError

    for name, path in data_files.items():
        get_task(name)
        if not Path(path).expanduser().exists():
            raise DataError(f"data file {path} (for task {name}) does not exist")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    from posttrain.judges import is_judge_spec, parse_judge_spec

    if is_judge_spec(judge):
        parse_judge_spec(judge)   # a malformed LM judge spec fails before any model loads
    names, is_suite = resolve_tasks(tasks) if (tasks or not harness_tasks) else ([], False)
    run = _Run(model, tokenizer, batch_size, seed, generator, predictions, judge, reference_model, reward_model,
               workers, log)
    if harness_tasks:
        from posttrain.evaluation.harness import require_harness

        require_harness(harness or "lm_eval")
    for name in names:  # a local data file is read and checked (every row) before any model loads
        if name in data_files:
            try:
                TASKS[name].load(TaskContext(data_files=data_files, limit=limit))
            except DataError as e:
                raise DataError(f"task {name}: {e}") from None
    if any(TASKS[n].kind in ("generate", "loglik", "winrate", "tools") and _missing_needs(TASKS[n], run) is None
           for n in names) or harness_tasks:
        run.generator()  # load the model first: a model that cannot load fails before any work
    results: dict[str, dict] = {}
    for name in names:
        task = TASKS[name]
        reason = _missing_needs(task, run)
        if reason is not None:
            if not is_suite:
                raise ConfigError(f"task {name} {reason}")
            results[name] = {"status": "skipped", "tag": task.tag, "reason": reason, "metrics": []}
            log(f"[{name}] skipped: {reason}")
            continue
        try:
            results[name] = _run_task(run, task, out_dir, limit, (max_new_tokens, num_samples, temperature),
                                      data_files, overwrite)
        except (DataError, ImportError) as e:
            if not is_suite:
                raise DataError(f"task {name}: {e}") from None
            offline = "1" in (os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE"))
            if task.hub and name not in data_files:
                reason = (f"hub set {task.hub.split(':')[0]} {'offline' if offline else 'not loadable'}; "
                          f"give --data-file {name}=FILE")
            else:
                reason = str(e).split(". ")[0][:200]
            results[name] = {"status": "skipped", "tag": task.tag, "reason": reason, "metrics": []}
            log(f"[{name}] skipped: {reason}")
    if harness_tasks:
        from posttrain.evaluation.harness import harness_results, run_harness

        raw = run_harness(harness or "lm_eval", run, harness_tasks, limit=limit)
        results.update(harness_results(raw))
    rows = [{"task": name, "tag": r["tag"], **m} for name, r in results.items() for m in r["metrics"]]
    result = {"model": run.model_id, "out_dir": str(out_dir), "seconds": round(time.perf_counter() - t0, 1),
              "tasks": results, "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    (out_dir / "results.md").write_text(format_markdown(result))
    return result


# ---------------------------------------------------------------------------------------------
# Reporting


def format_markdown(result: dict) -> str:
    lines = [f"# Evaluation: {result['model']}", "",
             "| task | tag | metric | value | 95% interval | n |", "|---|---|---|---|---|---|"]
    for name, r in result["tasks"].items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['tag']} | skipped: {r['reason']} | | | |")
            continue
        for m in r["metrics"]:
            lines.append(f"| {name} | {r['tag']} | {m['metric']} | {m['value']:.3f} | "
                         f"[{m['low']:.3f}, {m['high']:.3f}] | {m['n']} |")
    lines += ["", f"Total time: {result['seconds']:.0f} s. Per-sample outputs: `<task>/samples.jsonl`.", ""]
    return "\n".join(lines)


def print_results(result: dict, console=None) -> None:
    """The aggregate table, printed with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"posttrain eval — {result['model']}")
    for col, justify in (("task", "left"), ("tag", "left"), ("metric", "left"), ("value", "right"),
                         ("95% interval", "right"), ("n", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for name, r in result["tasks"].items():
        if r["status"] != "ok":
            table.add_row(name, r["tag"], "[dim]skipped[/dim]", "", "", "")
            continue
        for i, m in enumerate(r["metrics"]):
            table.add_row(name if i == 0 else "", r["tag"] if i == 0 else "", m["metric"], f"{m['value']:.3f}",
                          f"[{m['low']:.3f}, {m['high']:.3f}]", str(m["n"]))
    console.print(table)
    for name, r in result["tasks"].items():
        if r["status"] != "ok":
            console.print(f"[dim]skipped {name}: {r['reason']}[/dim]")
    times = ", ".join(f"{n} {r['seconds']:.0f}s" for n, r in result["tasks"].items() if "seconds" in r)
    console.print(f"time: {result['seconds']:.0f} s ({times})")
    console.print(f"results: {result['out_dir']}/results.md, results.json")
