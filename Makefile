# The two commands a fresh machine needs: `make demo` and `make test` (each builds .venv when missing).
# The dev setup installs the tested torch/torchvision pins (constraints-dev.txt); the library itself asks only for
# lower bounds, so `pip install fastai_cnntricks` leaves a project's own torch alone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PIP_DEV := $(PY) -m pip install -q -c constraints-dev.txt

.PHONY: install demo test nbdev-test bench clean

$(STAMP): settings.ini setup.py constraints-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_DEV) -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cnntricks demo

# The suite runs every notebook in nbs/ through tests/nbutil.py (the same execution nbdev-test does, once).
test: $(STAMP)
	$(VENV)/bin/pytest -q --durations=15

# The notebooks under nbdev's own runner (config: pyproject.toml [tool.nbdev]); not in `make test`, which runs them already.
nbdev-test: $(STAMP)
	$(VENV)/bin/nbdev-test nbs --n-workers 1 --timing

# Long benchmarks against the anchors (captum, kornia, ...); not part of the test suite.
bench: $(STAMP)
	$(PIP_DEV) -e '.[dev,bench]'
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) cnntricks_out *.egg-info build dist
