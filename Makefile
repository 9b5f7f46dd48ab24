# The two commands a newcomer needs (README.md):
#   make book   install (first time only), execute every chapter, build the HTML book
#   make test   install (first time only), run the test suite
# Either can be the first command on a fresh machine.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.medad-installed
PROFILE ?= quick
# Real data: `make book DATA=/path/to/archives` or MEDAD_DATA in the environment.
DATA    ?= $(MEDAD_DATA)
CHAPTERS ?=

.PHONY: install book test lock bench clean

install: $(STAMP)

# The lock pins every package (torch to the CPU build via constraints.txt), so
# pip installs without resolving and never reaches for CUDA wheels.
$(STAMP): requirements.lock constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

book: $(STAMP)
	$(BIN)/python -m medad book --profile $(PROFILE) $(if $(DATA),--data-dir $(DATA)) $(if $(CHAPTERS),--chapters $(CHAPTERS))

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/install_and_build.py

# Re-resolve the pins from requirements.in (needs the package registry).
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install -c constraints.txt -r requirements.in
	( echo "# Exact versions of everything medad installs: 'pip freeze --all' of requirements.in"; \
	  echo "# installed with -c constraints.txt. Regenerate: make lock"; \
	  build/lockenv/bin/pip freeze --all | grep -v '^pip==' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' ) > requirements.lock

clean:
	rm -rf book/_build book/executed build .pytest_cache
