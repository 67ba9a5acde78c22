"""``posttrain recipe run|list|show``: multi-stage recipes as YAML files in this folder.

A recipe names a base model, the evaluation tasks, decontamination settings and a list of stages
(``sft``, ``dpo``, ``grpo``/``rloo``/``ppo``/``nlpo``), each with its training data and a config
for that command. ``run`` goes top to bottom:

1. materialise each stage's training data and drop rows that overlap any evaluation prompt
   (n-gram decontamination, TÜLU 3 §3.1) → ``<out>/data/<stage>.jsonl`` + ``decontamination.json``;
2. evaluate the base model;
3. for each stage: train from the previous stage's model into ``<out>/<stage>/``, then evaluate;
4. write ``<out>/report.md`` (eval table per stage with n and 95% intervals, plots, the
   decontamination summary) and a Reward Report for every RL stage.

A stage whose ``<out>/<stage>/DONE`` exists is skipped; an interrupted one resumes from its newest
checkpoint; evaluation is resumable per sample. So re-running after a crash redoes nothing finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from posttrain.cli import TRAINING_COMMANDS, _resolve
from posttrain.config import ConfigError, load_config, to_dict
from posttrain.train.rl.algorithms import ALGORITHMS

RECIPES_DIR = Path(__file__).parent
# A stage is one of the training commands (config class, runner) — the command line's own table.
STAGE_COMMANDS = {name: (config, runner) for name, (config, runner, _) in TRAINING_COMMANDS.items()
                  if name != "reward"}
RL_COMMANDS = tuple(ALGORITHMS)   # the online-RL stages, which get a Reward Report


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict:
    """The recipe as a dict, each stage's config validated against its command's dataclass."""
    path = Path(name_or_path)
    if not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(list_recipes())} "
                          f"(or give a path to a recipe YAML file)")
    recipe = yaml.safe_load(path.read_text())
    for key in ("name", "model", "stages"):
        if key not in recipe:
            raise ConfigError(f"{path}: recipe needs a {key!r} entry")
    names = set()
    for i, stage in enumerate(recipe["stages"]):
        command = stage.get("command")
        if command not in STAGE_COMMANDS:
            raise ConfigError(f"{path}: stage {i} has command {command!r}; choose one of {', '.join(STAGE_COMMANDS)}")
        if stage.get("name") in names or not stage.get("name"):
            raise ConfigError(f"{path}: stage {i} needs a unique 'name'")
        names.add(stage["name"])
        stage["resolved"] = stage_config(recipe, stage, out="runs/<recipe>", model=recipe["model"])
    return recipe


def stage_config(recipe: dict, stage: dict, out: str, model: str, data: list | None = None):
    """The stage's typed config: recipe defaults ← the stage's config ← run-time paths."""
    cls = _resolve(STAGE_COMMANDS[stage["command"]][0])
    base = {"seed": recipe.get("seed", 0), **stage.get("config", {}), "model": model, "out": out}
    base["data"] = data if data is not None else stage.get("data", base.get("data"))
    if base["data"] is None:
        base.pop("data")
    return load_config(cls, base=base)


def show(name: str) -> str:
    recipe = load_recipe(name)
    for stage in recipe["stages"]:
        stage["config"] = {k: v for k, v in to_dict(stage.pop("resolved")).items() if k not in ("out", "model")}
    return yaml.safe_dump(recipe, sort_keys=False)


# ------------------------------------------------------------------------------------------ run
def _eval_tasks(recipe: dict) -> list[str]:
    ev = recipe.get("evaluation", {})
    return list(ev.get("dev", [])) + list(ev.get("unseen", []))


def _evaluate(recipe: dict, model: str, out_dir: Path) -> dict:
    """Evaluate each task with its own sample limit and length (resumable per sample)."""
    from posttrain.evaluation import evaluate

    ev = recipe.get("evaluation", {})
    rows, tasks = [], {}
    for task in _eval_tasks(recipe):
        result = evaluate(model, [task], out_dir=out_dir / task, limit=ev.get("limit", {}).get(task),
                          max_new_tokens=ev.get("max_new_tokens", {}).get(task),
                          batch_size=ev.get("batch_size", 16), seed=recipe.get("seed", 0))
        rows += result["rows"]
        tasks.update(result["tasks"])
    summary = {"model": model, "rows": rows, "tasks": tasks}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _prepare_data(recipe: dict, out: Path) -> dict:
    """Each stage's training rows, decontaminated against the evaluation prompts, as jsonl files."""
    from posttrain.data import mix_sources
    from posttrain.decontamination.overlap import decontaminate, filter_rows, flagged_rows, write_clean, write_report
    from posttrain.evaluation.tasks import task_prompts

    report_path = out / "decontamination.json"
    files = {s["name"]: out / "data" / f"{s['name']}.jsonl" for s in recipe["stages"]}
    if report_path.exists() and all(f.exists() for f in files.values()):
        return json.loads(report_path.read_text())
    settings = recipe.get("decontaminate", {})
    eval_sets = {}
    for task in _eval_tasks(recipe):
        try:
            eval_sets[task] = task_prompts(task)
        except Exception as e:  # a hub task offline: decontaminate against what can be loaded
            print(f"decontamination: skipping eval task {task} ({e})")
    train = {s["name"]: mix_sources(s.get("data", []), seed=recipe.get("seed", 0)) for s in recipe["stages"]}
    report = decontaminate(train, eval_sets, ngram=settings.get("ngram", 8), threshold=settings.get("threshold", 0.5))
    for name, rows in train.items():
        clean = filter_rows(rows, flagged_rows(report, name))
        files[name].parent.mkdir(parents=True, exist_ok=True)
        write_clean(clean, files[name])
    write_report(report, report_path)
    return report


def run(name: str, out: str | Path) -> Path:
    from posttrain.reports.recipe import write_recipe_report
    from posttrain.reports.reward_report import write_reward_report

    recipe = load_recipe(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(show(name))
    seconds: dict[str, float] = {}   # wall time of each step this invocation ran (the report's time table)

    def timed(step: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[step] = round(time.perf_counter() - start, 1)
        return result

    # --- 1. data, decontaminated against every evaluation prompt
    print(f"[recipe {recipe['name']}] decontaminating training data")
    contamination = timed("decontaminate", _prepare_data, recipe, out)

    # --- 2. the base model
    evals = {"base": timed("eval base", _evaluate, recipe, recipe["model"], out / "eval" / "base")}

    # --- 3. stages, each from the previous stage's model
    model = recipe["model"]
    for stage in recipe["stages"]:
        stage_dir = out / stage["name"]
        if (stage_dir / "DONE").exists():
            print(f"[recipe {recipe['name']}] {stage['name']}: finished earlier, skipping")
        else:
            print(f"[recipe {recipe['name']}] {stage['name']}: training from {model}")
            config = stage_config(recipe, stage, out=str(stage_dir), model=model,
                                  data=[str(out / "data" / f"{stage['name']}.jsonl")])
            step = f"train {stage['name']}"
            timed(step, _resolve(STAGE_COMMANDS[stage["command"]][1]), config,
                  command=f"posttrain recipe run {name} ({stage['name']})")
            (stage_dir / "DONE").write_text("done\n")
            print(f"[recipe {recipe['name']}] {stage['name']}: trained in {seconds[step]:.0f} s")
        model = str(stage_dir / "model")
        evals[stage["name"]] = timed(f"eval {stage['name']}", _evaluate, recipe, model, out / "eval" / stage["name"])
        if stage["command"] in RL_COMMANDS:
            write_reward_report(stage_dir, before=evals[list(evals)[-2]], after=evals[stage["name"]])

    # --- 4. the report
    path = write_recipe_report(out, recipe, evals, contamination, seconds)
    print(f"[recipe {recipe['name']}] done in {sum(seconds.values()) / 60:.1f} min: {path}")
    return path
