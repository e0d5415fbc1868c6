# sdlab: two commands do all the set-up (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdlab-installed

.PHONY: demo test lab setup clean browser notebooks

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Generate a labelled image grid offline with the embedded default model, under outputs/.
demo: $(STAMP)
	$(VENV)/bin/sdlab demo --out outputs/demo

## Debian's Chromium for tests/test_browser.py (Playwright drives it; never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: apt-get install chromium (tests/test_browser.py will skip)"; fi; }

## Lint and format checks, then the whole test suite: unit tests and every notebook under nbval.
test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	CI=$${CI-1} $(PY) -m pytest -p no:cacheprovider tests notebooks --nbval-lax --sanitize-with tests/nbval_sanitize.cfg -q

## Execute the notebooks at full scale and save them with widget state, then check them
## (tools/run_notebooks.py; one thread each unless OMP_NUM_THREADS says otherwise).
## `make notebooks NB=notebooks/04_controlnet.ipynb` runs only the notebooks named.
NB ?=
notebooks: $(STAMP)
	$(PY) tools/run_notebooks.py $(NB)
	SDLAB_NOTEBOOKS="$(NB)" $(PY) -m pytest -p no:cacheprovider tests/test_notebooks.py -q

## Open JupyterLab on notebooks/.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf outputs .pytest_cache
