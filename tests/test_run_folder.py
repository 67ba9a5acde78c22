"""Run folders (issue 21): one run at a time, no resume under a changed config, step logs that
survive a torn line and a resume, and a truncated newest checkpoint that is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.cli import main as cli_main
from posttrain.config import ConfigError
from posttrain.train.run_folder import (changed_keys, checkpoint_problem, newest_sound_checkpoint, read_jsonl,
                                        rewind_step_logs)


def _sft(tiny_model_dir, out, *extra) -> int:
    return cli_main(["sft", f"model={tiny_model_dir}", f"out={out}", "batch_size=2", "max_length=96",
                     "learning_rate=1e-3", "progress=false", "data=[{source: 'builtin:arithmetic_sft', count: 24}]",
                     *extra])


def _steps(out: Path, name: str = "metrics.jsonl", key: str = "loss") -> list[int]:
    return [r["step"] for r in read_jsonl(out / name) if key in r]


# --------------------------------------------------------------------------- lock


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from posttrain.train.run_folder import lock_run_folder; lock_run_folder(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = cli_main(["sft", f"out={run}", "model=./no/such/model", "progress=false"])
        err = capsys.readouterr().err
        assert rc == 2 and "another run is writing this folder (pid" in err and f"{holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with its process: the folder is free again (the model is then missing)
    rc = cli_main(["sft", f"out={run}", "model=./no/such/model", "progress=false"])
    assert rc == 2 and "another run" not in capsys.readouterr().err


# --------------------------------------------------------------------------- config on resume


def test_resume_refuses_a_changed_config_but_extends_max_steps(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _sft(tiny_model_dir, out, "max_steps=2") == 0
    assert _steps(out) == [1, 2]
    capsys.readouterr()

    rc = _sft(tiny_model_dir, out, "max_steps=2", "learning_rate=1e-4", "lr_schedule=cosine")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "holds a run with another config (learning_rate: 0.001 -> 0.0001; lr_schedule: \"linear\" -> " \
           "\"cosine\")" in err and "Pass overwrite=true" in err

    assert _sft(tiny_model_dir, out, "max_steps=3") == 0   # only max_steps changed: resumes
    assert _steps(out) == [1, 2, 3]

    assert _sft(tiny_model_dir, out, "max_steps=2", "learning_rate=1e-4", "overwrite=true") == 0
    assert _steps(out) == [1, 2]   # started over: no step 3 left from the old run
    assert max(r["lr"] for r in read_jsonl(out / "metrics.jsonl")) == pytest.approx(1e-4)   # the new schedule


def test_changed_keys_ignore_length_logging_and_new_options():
    old = {"learning_rate": 1e-3, "max_steps": 2, "logging_steps": 1, "data": [{"source": "a"}]}
    new = {"learning_rate": 1e-3, "max_steps": 9, "logging_steps": 5, "data": [{"source": "a"}], "overwrite": False}
    assert changed_keys(old, new) == []
    assert changed_keys(old, {**new, "data": [{"source": "b"}]}) == [("data", [{"source": "a"}], [{"source": "b"}])]


# --------------------------------------------------------------------------- step logs


def test_torn_last_metrics_line_does_not_break_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _sft(tiny_model_dir, out, "max_steps=2") == 0
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr"')   # a crash mid-write
    assert _sft(tiny_model_dir, out, "max_steps=3") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]   # every line parses


def test_rewind_drops_later_steps_and_torn_lines_from_every_log(tmp_path):
    for name in ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"step": s, "i": i}) + "\n"
                                             for s, i in [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0)]) + '{"step": 3,')
    rewind_step_logs(tmp_path, 2)
    for name in ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl"):
        assert [(r["step"], r["i"]) for r in read_jsonl(tmp_path / name)] == [(0, 0), (1, 0), (2, 0), (2, 1)]
        assert (tmp_path / name).read_text().endswith("\n")


def test_resumed_rl_run_writes_no_duplicate_samples(tiny_model_dir, tmp_path):
    from test_rl import rl_config

    from posttrain.train.rl.config import GRPOConfig
    from posttrain.train.rl.trainer import run_rl

    out = tmp_path / "rl"
    common = dict(max_steps=3, save_steps=1, eval_steps=1, save_samples=2, keep_checkpoints=3)
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, **common))
    first = [(r["step"], r["completion"]) for r in read_jsonl(out / "samples.jsonl")]
    first_eval = [(r["step"], r["index"]) for r in read_jsonl(out / "eval_samples.jsonl")]
    # As if the run had died after logging step 3 but before its checkpoint landed:
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-000003")
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, **common))
    again = [(r["step"], r["completion"]) for r in read_jsonl(out / "samples.jsonl")]
    again_eval = [(r["step"], r["index"]) for r in read_jsonl(out / "eval_samples.jsonl")]
    assert [s for s, _ in again] == [s for s, _ in first] == [1, 1, 2, 2, 3, 3]
    assert again_eval == first_eval and len(set(again_eval)) == len(again_eval)
    assert _steps(out, key="reward_mean") == [1, 2, 3]


# --------------------------------------------------------------------------- checkpoints


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _sft(tiny_model_dir, out, "max_steps=4", "save_steps=2") == 0
    newest = out / "checkpoints" / "step-000004"
    assert checkpoint_problem(newest) is None and (newest / "manifest.json").exists()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])   # a torn write
    assert "model.safetensors has" in checkpoint_problem(newest)
    assert newest_sound_checkpoint(out / "checkpoints", warn=False).name == "step-000002"
    capsys.readouterr()

    assert _sft(tiny_model_dir, out, "max_steps=5", "save_steps=2") == 0
    captured = capsys.readouterr()
    assert "skipping damaged checkpoint" in captured.err and "step-000004" in captured.err
    assert "resuming from" in captured.out and "step-000002" in captured.out
    assert _steps(out) == [1, 2, 3, 4, 5]


def test_checkpoints_without_manifest_are_checked_by_their_format(tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    save_file({"w": torch.zeros(64)}, ckpt / "model.safetensors")
    torch.save({"state": 1}, ckpt / "trainer_state.pt")
    assert checkpoint_problem(ckpt) is None
    data = (ckpt / "trainer_state.pt").read_bytes()
    (ckpt / "trainer_state.pt").write_bytes(data[:-30])
    assert checkpoint_problem(ckpt) == "trainer_state.pt is truncated"
    (ckpt / "trainer_state.pt").write_bytes(data)
    weights = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[:-8])
    assert checkpoint_problem(ckpt) == "model.safetensors is truncated"


def test_overwrite_on_a_fresh_folder_and_out_is_checked_first(tmp_path):
    from posttrain.train.run_folder import check_out_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, so the folder cannot be made there"):
        check_out_folder(tmp_path / "file" / "run")
