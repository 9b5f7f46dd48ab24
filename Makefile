# The two commands a newcomer needs (README.md):
#   make book   install (first time only), execute every chapter, build the HTML book
#   make test   install (first time only), run the test suite
# Either can be the first command on a fresh machine.

# The repository (this Makefile's folder), so that `make -f path/to/Makefile book` works from any folder.
ROOT    := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
PYTHON  ?= python3
VENV    ?= $(ROOT).venv
BIN     := $(abspath $(VENV))/bin
STAMP   := $(abspath $(VENV))/.medad-installed
PROFILE ?= quick
# Real data: `make book DATA=/path/to/archives` or MEDAD_DATA in the environment. A relative
# DATA is relative to the folder make runs in (the repository with `make` or `make -C`, the
# caller's folder with `make -f`); medad makes it absolute there, before any notebook kernel sees it.
# DATA may hold spaces; CHAPTERS takes names separated by commas, with or without spaces.
DATA    ?= $(MEDAD_DATA)
CHAPTERS ?=

# One shell word, whatever the value holds (spaces, quotes): 'it'\''s' for it's.
quote = '$(subst ','\'',$(1))'

.PHONY: install book test rehearse lock bench clean

install: $(STAMP)

# The lock pins every package (torch to the CPU build via constraints.txt), so
# nothing is resolved and no CUDA wheels are pulled. uv installs the lock in
# parallel (about 10x faster than pip here); pip is the fallback. uv does not
# read pip's configuration, so pip's find-links (where a local torch wheel may
# sit) are passed on explicitly.
UV_VERSION := 0.13.9
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_LINKS   := $(foreach d,$(FIND_LINKS),--find-links $(d))

$(STAMP): $(ROOT)requirements.lock $(ROOT)constraints.txt $(ROOT)pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(abspath $(VENV))
	@cd $(ROOT) && if $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) 2>/dev/null; then \
	  $(BIN)/uv pip install --python $(BIN)/python --no-deps -c constraints.txt -r requirements.lock $(UV_LINKS) && \
	  $(BIN)/uv pip install --python $(BIN)/python --no-deps --no-build-isolation -e . ; \
	else \
	  $(BIN)/python -m pip install --quiet --no-deps -c constraints.txt -r requirements.lock && \
	  $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . ; \
	fi
	@touch $@

book: $(STAMP)
	$(BIN)/python -m medad book --profile $(call quote,$(PROFILE)) $(if $(DATA),--data-dir $(call quote,$(DATA))) $(if $(CHAPTERS),--chapters $(call quote,$(CHAPTERS)))

# The full profiles on this CPU with only the counts capped, then every exercise's command capped (minutes).
rehearse: $(STAMP)
	$(BIN)/python -m medad rehearse $(if $(DATA),--data-dir $(call quote,$(DATA)))

test: $(STAMP)
	cd $(ROOT) && $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	cd $(ROOT) && $(BIN)/python benchmarks/install_and_build.py

# Re-resolve the pins from requirements.in (needs the package registry).
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install -c constraints.txt -r requirements.in
	( echo "# Exact versions of everything medad installs: 'pip freeze --all' of requirements.in"; \
	  echo "# installed with -c constraints.txt. Regenerate: make lock"; \
	  build/lockenv/bin/pip freeze --all | grep -v '^pip==' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' ) > requirements.lock

clean:
	cd $(ROOT) && rm -rf book/_build book/executed build .pytest_cache
