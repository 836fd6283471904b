# The two commands a fresh machine needs: `make demo` and `make test` (each builds .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test bench clean

$(STAMP): settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cnntricks demo

test: $(STAMP)
	$(VENV)/bin/pytest -q --durations=15

# Long benchmarks against the anchors (captum, kornia, ...); not part of the test suite.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) cnntricks_out *.egg-info
