# Two commands on a fresh machine (Python 3.11+ with venv):
#   make demo   installs the runtime into .venv and runs the main job on SynthFER
#   make test   installs runtime + test extras (torch CPU, timm, transformers), checks the
#               formatting (pyink) and runs the tests
#   make format applies the formatter (pyink, configured in pyproject.toml)
# Both installs take pyproject.toml's ranges under the constraints of requirements.txt (the exact
# tested runtime set); the test tools are pinned in requirements-test.txt. On GPU/TPU hosts, see
# README.md "On GPU / TPU" (`pip install -c requirements.txt -e .[gpu]`).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
WORKDIRS ?= workdirs

.PHONY: demo test format install install-test clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.txt -e .
	touch $@

# jax2onnx goes in without its dependencies: they are in requirements-test.txt, but for an
# orbax-checkpoint cap (pyproject.toml's `onnx` extra).
$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(PY) -m pip install -q -c requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps jax2onnx==0.17.1
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

# Pre-train the tiny image emotion classifier, then adapt it to video with FE-Adapter.
demo: $(VENV)/.runtime
	$(PY) -m feadapter_jax.main --config=configs/synthetic_image.py --workdir=$(WORKDIRS)/synth_image
	$(PY) -m feadapter_jax.main --config=configs/synthetic.py:init=$(WORKDIRS)/synth_image/export --workdir=$(WORKDIRS)/synth_video

test: $(VENV)/.test
	$(PY) -m pyink --check --quiet .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

format: $(VENV)/.test
	$(PY) -m pyink --quiet .

clean:
	rm -rf $(VENV) $(WORKDIRS)
