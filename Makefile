# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv first.
PYTHON ?= python3.11
VENV := .venv
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
# pip's note about mirror folders it cannot see is noise on these machines.
QUIET_PIP := 2>&1 | { grep -v '^WARNING: Location' || true; }
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt requirements-data.txt | cksum | cut -d' ' -f1)

# Real tumour cases that only the pyradiomics 3.0.1 sdist ships (its data/ folder): fetched once with pip at
# install time (never at test time) into the venv, where infra/local/catalogue.py finds them.
BUNDLED := $(VENV)/share/braindino-data
PYRADIOMICS_SDIST := pyradiomics==3.0.1
PYRADIOMICS_FILES := brain1_image.nrrd brain1_label.nrrd brain2_image.nrrd brain2_label.nrrd

.PHONY: demo test install debian-data clean

install: $(STAMP) $(BUNDLED)/pyradiomics/.complete

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q torch==2.13.0 -c constraints.txt $(QUIET_PIP)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]' $(QUIET_PIP)
	$(VENV)/bin/python -m pip install -q --no-deps -r requirements-data.txt $(QUIET_PIP)
	rm -f $(VENV)/.installed-* && touch $@

$(BUNDLED)/pyradiomics/.complete: | $(STAMP)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(VENV)/bin/python -m pip download -q --no-deps --no-build-isolation -d "$$tmp" $(PYRADIOMICS_SDIST) $(QUIET_PIP) && \
	tar -xzf "$$tmp"/pyradiomics-*.tar.gz -C "$$tmp" $(addprefix pyradiomics-3.0.1/data/,$(PYRADIOMICS_FILES)) && \
	mkdir -p $(@D) && mv $(addprefix "$$tmp"/pyradiomics-3.0.1/data/,$(PYRADIOMICS_FILES)) $(@D)/ && touch $@

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
