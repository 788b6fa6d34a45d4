# Two commands on a fresh machine:
#   make demo   run the showcase notebook as a KFP v2 pipeline on kfp.local
#   make test   run the test suite
# Both create .venv (one pip resolve of requirements.txt + this project) when missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nbship-installed
SHOWCASE := notebooks/marker_classifier.ipynb

.PHONY: venv demo test test-notebooks test-fast lint bench tools clean labextension lab

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nbship check $(SHOWCASE)
	$(BIN)/nbship run $(SHOWCASE)

test: $(STAMP) labextension
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
	$(BIN)/nbship test notebooks/

test-notebooks: $(STAMP)
	$(BIN)/nbship test notebooks/

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The JupyterLab extension's front end (labextension/, TypeScript) built into
# nbship/labextension with JupyterLab's builder, when Node is here; without Node the
# browser tests skip, saying why.
LABEXT := nbship/labextension/package.json
labextension: $(STAMP)
	@if ! command -v node >/dev/null; then \
	  echo "labextension: Node is not installed: the JupyterLab front end is not built"; \
	elif [ ! -f $(LABEXT) ] || [ -n "$$(find labextension/src labextension/style \
	     labextension/package.json labextension/package-lock.json -newer $(LABEXT))" ]; then \
	  cd labextension && npm ci --no-audit --no-fund --loglevel=error && npx tsc && \
	  PATH="$(CURDIR)/$(BIN):$$PATH" jupyter-builder build . ; \
	else echo "labextension: up to date"; fi

# JupyterLab with nbship's extensions on the showcase; prints the URL to open
lab: $(STAMP) labextension
	$(BIN)/nbship lab $(SHOWCASE)

lint: $(STAMP)
	$(BIN)/ruff check nbship tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/compile_and_run.py
	$(BIN)/python benchmarks/notebook_tests.py
	$(BIN)/python benchmarks/build.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/scheduler.py
	$(BIN)/python benchmarks/delivery.py

# The programs `nbship build/publish`, `nbship monitor` and their tests use, and the
# browser the JupyterLab tests drive (Debian's packages). Without them those tests are skipped, with the reason shown; .ci/run
# installs them.
IMAGE_TOOLS := buildah skopeo docker-registry debootstrap prometheus prometheus-alertmanager \
               chromium
tools:
	@missing=""; for t in $(IMAGE_TOOLS); do \
	  command -v $$t >/dev/null || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then echo "tools: all installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IMAGE_TOOLS); \
	else echo "missing:$$missing; run as root: apt-get install $(IMAGE_TOOLS)"; exit 1; fi
	@if command -v node >/dev/null; then echo "tools: node $$(node --version)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing: nodejs npm (the JupyterLab extension's build)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	else echo "missing: node (the JupyterLab front end is not built; its tests skip)"; fi

clean:
	rm -rf .nbship build benchmarks/out
