# OpenDeep. `make run` and `make test` do all the set-up on a fresh machine (Debian, Python >= 3.11).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-installed
# Debian packages the tests need: a browser for the one real-browser test.
TEST_DEBS := chromium

.PHONY: install install-system run test test-fast bench lint demo clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "OpenDeep needs Python >= 3.11"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs missing Debian packages (needs root, as on this project's machines and CI).
install-system: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): Makefile
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or: sudo apt-get install$$missing)"; exit 2; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $(SYSTEM_STAMP)

run: install
	$(BIN)/opendeep db upgrade
	$(BIN)/opendeep serve

test: install install-system
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Without the browser test, for a quick loop.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not browser"

# The whole product without Asterisk or an API key: an Asterisk simulator and scripted models.
demo: install
	$(BIN)/python -m tests.demo

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) opendeep.db opendeep.db-wal opendeep.db-shm *.egg-info
