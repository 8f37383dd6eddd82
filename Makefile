# The two commands (README): `make demo` runs the pipeline end to end, `make test` runs the tests.
# Both create the environment first when it is missing or out of date.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ds-distil-installed
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
# DeepSpeed JIT-builds its CPU comm op per torch install; one cache per venv, so that checkouts side by side
# (each with its own venv) do not rebuild it over each other's copy at every start
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
PYTEST_ARGS ?=
# tests run on TEST_WORKERS processes side by side (pytest-xdist; 0: in this process)
TEST_WORKERS ?= 2

.PHONY: demo test env clean-demo

env: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/demo
