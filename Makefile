# The two commands of the README. Both create .venv on first use and reinstall
# only when setup.cfg, pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
MXNET_EXTRA ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(MXNET_EXTRA)

.PHONY: demo test install clean-venv

demo: $(STAMP)
	$(PY) run_sweep.py --config sweeps/demo.yaml

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(MXNET_EXTRA),test]'
	rm -f $(VENV)/.installed-*
	touch $@

clean-venv:
	rm -rf $(VENV)
