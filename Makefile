# TreeScale developer entry points. `make demo` and `make test` are the README contract.
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
STAMP  := .make-installed

.PHONY: install demo test unit integration bench bench-quick lint clean

# Reinstall only when the packaging changes.
$(STAMP): pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check -e '.[test,bench]'
	@touch $(STAMP)

install: $(STAMP)

demo: install  ## a node, publishers and subscribers on loopback, live (Ctrl-C stops)
	$(PYTHON) -m tsctl.main demo $(DEMO_ARGS)

test: install  ## the whole suite: unit, integration (real node processes)
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

integration: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

.PHONY: test-system
test-system: install  ## the slow tier: tsctl build onto systemd containers (root, Docker, debootstrap)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m system tests/system $(PYTEST_ARGS)

bench: install  ## TreeScale against Redis, NATS, Mosquitto and raw pyzmq, same run
	$(PYTHON) -m bench.run $(BENCH_ARGS)
	$(PYTHON) -m bench.tree_failover
	$(PYTHON) -m bench.silent_link     # root: two network namespaces
	$(PYTHON) -m bench.tree_scale --nodes 100

bench-quick: install
	$(PYTHON) -m bench.run --quick $(BENCH_ARGS)

lint: install
	$(PYTHON) -m ruff check .

clean:
	rm -rf $(STAMP) build *.egg-info .pytest_cache .ruff_cache .hypothesis
