# Two commands for a new user: `make demo` and `make test`. Each installs what it needs: the
# package with its demo extra (embedded PostgreSQL, amqtt) and the test tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint unit integration setup mosquitto kafka-jars prometheus postgresql-tls clean

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

setup: $(STAMP) mosquitto kafka-jars prometheus postgresql-tls

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (PYTHON=$(PYTHON))"; exit 1; }
	@echo "Installing the gateway and its test tools into $(VENV) with pip ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[demo,test]'
	@rm -f $(VENV)/.installed-* && touch $@
	@echo "Installed into $(VENV): \`. $(BIN)/activate\` puts the gateway command on PATH."

# Debian packages, installed when missing and when we may (root, or password-less sudo).
# apt-get says nothing (nor debconf) unless it fails: then its whole output is shown.
# $(call apt_install,<is it there? (shell test)>,<packages>,<what, for the message>)
APT_GET := env DEBIAN_FRONTEND=noninteractive apt-get -y -q
define apt_install
	@$(1) || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "$(2) is missing and cannot be installed without root: apt-get install $(2)"; exit 1; fi; \
		echo "Installing $(3) with apt-get ..."; log=$$(mktemp); \
		{ $$SUDO $(APT_GET) install --no-install-recommends $(2) || \
		{ $$SUDO $(APT_GET) update && $$SUDO $(APT_GET) install --no-install-recommends $(2); }; } >$$log 2>&1 || \
		{ cat $$log; rm -f $$log; echo "could not install $(2) with apt-get"; exit 1; }; rm -f $$log; }
endef

mosquitto:
	$(call apt_install,{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; },mosquitto,Mosquitto (the MQTT broker))

# Debian's prometheus (the server and promtool) for the rules tests and the Prometheus
# integration test. The tests start their own server on a free port, never the packaged service.
prometheus:
	$(call apt_install,{ command -v promtool && command -v prometheus; } >/dev/null,prometheus,Prometheus (server and promtool; for the tests))

# Debian's PostgreSQL server, for the TLS tests only (the embedded wheel's build has no OpenSSL).
# No cluster of its own is created: the tests start theirs on free ports.
postgresql-tls:
	@test -e /etc/postgresql-common/createcluster.conf || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
		{ [ "$$(id -u)" != 0 ] || { mkdir -p /etc/postgresql-common && \
		echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; }; }
	$(call apt_install,ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1,postgresql,PostgreSQL (Debian's; for the TLS tests))

# The Kafka broker's jars, resolved from Maven Central into a cache outside the repository.
kafka-jars: $(STAMP)
	@command -v java >/dev/null || { echo "Java 17 is needed for the Kafka broker (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to fetch the Kafka broker (apt-get install maven)"; exit 1; }
	$(BIN)/python -m gateway.services.kafka fetch

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
