# streamrec: the two set-up commands are `make up` (install + local demo) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES = kcat prometheus postgresql openjdk-17-jre-headless maven

.PHONY: up install system-deps python-deps kafka-jars test test-unit test-integration test-kube kube-binaries proto check-proto

up: install
	streamrec up

install: system-deps python-deps kafka-jars

# Debian packages the stack and the tests use; skipped when already present.
system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

python-deps:
	$(PIP) install -q -e '.[dev]'

kafka-jars:
	$(PYTHON) -m services.common.localkafka fetch

test:
	$(PYTHON) -m pytest -q tests

test-unit:
	$(PYTHON) -m pytest -q tests/unit

test-integration:
	$(PYTHON) -m pytest -q tests/integration

# etcd + kube-apiserver from Go sources, built once into ~/.cache/streamrec/devcluster.
kube-binaries:
	$(PYTHON) -m services.devcluster build

test-kube: kube-binaries
	$(PYTHON) -m pytest -q -m kube tests/integration/kube

proto:
	streamrec dev gen-proto
