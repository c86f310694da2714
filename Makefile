# The two commands of the README. Both create .venv on first use and reinstall
# only when setup.cfg, pyproject.toml or the constraints file change.
PYTHON ?= python3
VENV ?= .venv
# Trial backends to install: cpu or gpu (MXNet Gluon, the reference), torch (PyTorch);
# tracking: TensorBoard and MLflow, to watch a sweep live.
MXNET_EXTRA ?= cpu
EXTRAS ?= $(MXNET_EXTRA),torch,tracking
comma := ,
# numpy < 1.24 and the rest of MXNet's stack only where MXNet is installed.
CONSTRAINTS ?= $(if $(filter cpu gpu,$(subst $(comma), ,$(EXTRAS))),constraints.txt,constraints-torch.txt)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test lint install clean-venv

demo: $(STAMP)
	$(PY) run_sweep.py --config sweeps/demo.yaml

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff's rules (pyproject.toml) and its formatting; `ruff format .` fixes the latter.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS),test]'
	rm -f $(VENV)/.installed-*
	touch $@

clean-venv:
	rm -rf $(VENV)
