# make demo: install, train the VAE then the DiT on the built-in world (CPU), sample held-out prompts,
#            write videos, a contact sheet and the judge's report under runs/demo/.
# make test: install, run the test suite (8 fake CPU devices).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := runs/demo

AOT_VENV ?= .venv-aot
# setup.py extras for `make install`; TPU VMs use EXTRAS=tpu (launch/tpu_pod.py).
EXTRAS ?= dev

.PHONY: install test demo clean aot-venv

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -n 2 tests

demo: install
	$(PY) -m sorajax.train --config configs/shapes/vae.py --workdir $(DEMO)/vae
	$(PY) -m sorajax.train --config configs/shapes/dit.py --workdir $(DEMO)/dit \
	    --config.vae_workdir=$(DEMO)/vae
	$(PY) -m sorajax.evaluate --workdir $(DEMO)/dit --out $(DEMO)/report
	@echo "videos, contact sheet and report: $(DEMO)/report (see report.md)"

# A second virtualenv with libtpu, for `python -m sorajax.aot --topology v5p:...` on any machine
# (kept apart: libtpu in the main one makes every CPU run probe for a TPU).
$(AOT_VENV)/.installed: setup.py
	test -x $(AOT_VENV)/bin/python || $(PYTHON) -m venv $(AOT_VENV)
	$(AOT_VENV)/bin/python -m pip install --upgrade pip
	$(AOT_VENV)/bin/python -m pip install -e '.[dev,tpu]'
	touch $@

aot-venv: $(AOT_VENV)/.installed

clean:
	rm -rf $(DEMO)
