# TreeScale developer entry points. `make demo` and `make test` are the README contract.
#
# Everything runs in a project virtual environment, .venv, so nothing is ever installed
# into a system interpreter (Debian's /usr/bin/python3 refuses it: PEP 668). PYTHON only
# picks the interpreter that creates .venv (>= 3.11, with the venv module: Debian's
# python3-venv); every later command uses .venv/bin/python.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Reinstall only when the packaging changes; the stamp lives (and dies) with the venv.
STAMP  := $(VENV)/.installed-from-pyproject
# `make bench` keeps every run's numbers here (BENCHMARKS.md's tables come from it).
BENCH_JSON ?= bench-results.json

.PHONY: install js-install test-js demo test unit integration bench bench-quick bench-durable simulate fuzz chaos lint clean

CHECK_VERSION := import sys; sys.version_info >= (3, 11) or sys.exit("$(PYTHON) is Python %s: \
TreeScale needs 3.11 or newer (make PYTHON=/path/to/python3.11 ...)" % sys.version.split()[0])

# A failed `python -m venv` (no ensurepip: python3-venv missing) leaves a half-made
# .venv behind: remove it, so the next run tries again instead of using it.
$(PY):
	@$(PYTHON) -c '$(CHECK_VERSION)'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "could not create $(VENV) with $(PYTHON) (Debian: apt-get install python3-venv)" >&2; \
	  exit 1; }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	@touch $(STAMP)

install: $(STAMP)

demo: install  ## a node, publishers and subscribers on loopback, live (Ctrl-C stops)
	$(PY) -m tsctl.main demo $(DEMO_ARGS)

test: install js-install  ## the whole suite: unit, integration (real node processes), JavaScript, browser
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-js

# The JavaScript client (clients/js) and the dashboard: node --test against real node
# processes, and Debian's chromium driven by puppeteer-core. npm installs from the lock
# file once per change of it (the stamp lives in node_modules).
JS       := clients/js
JS_STAMP := $(JS)/node_modules/.installed-from-lock
$(JS_STAMP): $(JS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: the JavaScript tests need \
Node.js 20 and npm (Debian: apt-get install nodejs npm chromium)" >&2; exit 1; }
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

js-install: $(JS_STAMP)

test-js: install js-install  ## the JavaScript client's and the dashboard's tests
	cd $(JS) && TREESCALE_PYTHON=$(abspath $(PY)) npm test --silent

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: install
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

.PHONY: test-system
test-system: install  ## the slow tier: tsctl build onto systemd containers (root, Docker, debootstrap)
	$(PY) -m pytest -q -p no:cacheprovider -m system tests/system $(PYTEST_ARGS)


# The peers (redis-server, nats-server, mosquitto) are Debian packages: installed with
# apt-get when we run as root, else named one line each and left out of the run.
bench: install  ## TreeScale against Redis, NATS, Mosquitto and raw pyzmq, same run
	$(PY) -m bench.run --install-peers --json $(BENCH_JSON) $(BENCH_ARGS)
	$(PY) -m bench.tree_failover
	$(PY) -m bench.silent_link     # root: two network namespaces
	$(PY) -m bench.services        # root: three Docker machines (a dockerd per namespace)
	$(PY) -m bench.images          # root: an image streamed two hops vs docker save | docker load
	$(PY) -m bench.tree_scale --nodes 100
	$(PY) -m bench.node_memory     # one node's RSS: default services, services = []
	$(PY) -m bench.curve           # CURVE on vs off, same run
	$(PY) -m bench.subscribe_scale  # µs per SUB at 1k/10k/100k, heartbeats meanwhile
	$(PY) -m bench.websocket --json bench-websocket.json  # gateway vs ZeroMQ vs nats.ws
	$(MAKE) --no-print-directory simulate
	$(MAKE) --no-print-directory bench-durable

# Scale on paper from the real routing/interest/tree/healing modules, no sockets:
# 10^2..10^6 nodes, tree vs full mesh; 10^6's tables and interest extrapolated (about
# 20 minutes of one core, most of it 10^5's sampled tables; up to 3 GiB; --full-max 1000
# adds 10 minutes and 6 GiB). SIMULATE_ARGS: --sizes, --full-max, --sample-max, --seed,
# --reuse FILE (sizes run one at a time, joined afterwards).
SIMULATE_JSON ?= bench-simulate.json
simulate: install  ## tree vs mesh at 10^3..10^6 nodes: tables, interest messages, hops
	$(PY) -m bench.simulate --json $(SIMULATE_JSON) --plot docs/scale.png $(SIMULATE_ARGS)

# Durable delivery against NATS JetStream (file store), same run; its own JSON file.
# BENCH_DURABLE_ARGS: --quick, --repeat N, --shapes, --sync default,always,group,none.
BENCH_DURABLE_JSON ?= bench-durable.json
bench-durable: install  ## durable publish/consume/latency: TreeScale vs JetStream
	$(PY) -m bench.durable --install-peers --json $(BENCH_DURABLE_JSON) $(BENCH_DURABLE_ARGS)

bench-quick: install
	$(PY) -m bench.run --quick $(BENCH_ARGS)

# Not part of `make test`: a million generated frames at a live node (about a minute
# on 2 cores); exits non-zero if the node crashed. FUZZ_ARGS: --frames, --seconds, --seed.
fuzz: install  ## hostile frames at a live node: crashes, RSS growth, errors by code
	$(PY) -m bench.fuzz $(FUZZ_ARGS)

# Not part of `make test` (tests/integration/test_chaos.py is its 30-second version):
# kill -9, SIGSTOP and (as root) link cuts on a 20-node tree for 5 minutes while
# durable events flow; exits non-zero if one is lost, unexpected or silently
# duplicated. CHAOS_ARGS: --nodes, --seconds, --seed, --rate, --dir.
chaos: install  ## durable delivery under node kills, pauses and link cuts
	$(PY) -m bench.chaos $(CHAOS_ARGS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis \
	  $(JS)/node_modules bench/js/node_modules
