# sdlab: two commands do all the set-up (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdlab-installed

.PHONY: demo test lab setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Generate a labelled image grid offline with the embedded default model, under outputs/.
demo: $(STAMP)
	$(VENV)/bin/sdlab demo --out outputs/demo

## Run the whole test suite: unit tests and every notebook under nbval.
test: $(STAMP)
	CI=$${CI-1} $(PY) -m pytest -p no:cacheprovider tests notebooks --nbval-lax --sanitize-with tests/nbval_sanitize.cfg -q

## Open JupyterLab on notebooks/.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf outputs .pytest_cache
