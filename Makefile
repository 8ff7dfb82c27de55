# make demo: install into .venv and run the quickstart pipeline on the embedded synthetic data
# make test: install into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test clean

install: $(VENV)/.installed

# reinstall when the dependencies change; torch resolves to whatever build fits the machine
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/medalign run pipelines/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
