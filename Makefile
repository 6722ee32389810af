# OpenDeep. `make run` and `make test` do all the set-up on a fresh machine (Debian, Python >= 3.11).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-installed
# Debian packages the tests need: a browser for the one real-browser test; what building Asterisk needs and the
# stock prompts the real-Asterisk tests play (tests/asterisk/).
ASTERISK_BUILD_DEBS := build-essential pkg-config libjansson-dev libxml2-dev libsqlite3-dev uuid-dev libedit-dev \
	libssl-dev libncurses-dev
TEST_DEBS := chromium asterisk-core-sounds-en-gsm $(ASTERISK_BUILD_DEBS)

.PHONY: install install-system asterisk run test test-fast bench lint demo clean

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

# A real Asterisk for the tests: ASTERISK_BIN or `asterisk` on PATH (>= 22), else built once from the source
# tarball (ASTERISK_TARBALL, default ../shared/asterisk/asterisk-22.10.1.tar.gz) into ~/.cache/opendeep.
# Without either, the real-Asterisk tests are skipped with the reason (CI: OPENDEEP_REQUIRE_ASTERISK=1 fails them).
asterisk: install-system
	@if [ -n "$$ASTERISK_BIN" ] || command -v asterisk >/dev/null 2>&1; then exit 0; fi; \
	tests/asterisk/build_asterisk.sh >/dev/null; code=$$?; \
	if [ $$code -eq 3 ]; then echo "no Asterisk source tarball: the real-Asterisk tests will be skipped"; \
	elif [ $$code -ne 0 ]; then exit $$code; fi

test: install install-system asterisk
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Without the browser test, for a quick loop.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not browser"

# The whole product without Asterisk or an API key: an Asterisk simulator and scripted models.
demo: install
	$(BIN)/python -m tests.demo

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# ruff over everything; mypy over the product packages (the list and flags are [tool.mypy] in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) opendeep.db opendeep.db-wal opendeep.db-shm *.egg-info
