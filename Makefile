# Lookalike: `make run` (install, build the demo catalog and index, serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DATA := /usr/share/sweethome3d/furniture
CHROMIUM := /usr/bin/chromium
# Photographs that shopper-photo composites are pasted into (bench/shopper_quality.py, lookalike train-detector).
WALLPAPERS := /usr/share/wallpapers/Path

.PHONY: install run demo serve test lint bench-quality bench-peers bench-shopper train-detector clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip takes torch/torchvision from the machine's wheel cache when it has them (see README); the ray extra lets
# the tests run the Ray Data engine on a local Ray, the milvus extra the vector-store contract on milvus-lite.
# The venv takes about 7 GB (torch's CUDA build); --no-cache-dir keeps pip from keeping a second copy of downloads.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --no-cache-dir -e '.[test,ray,milvus,train,onnxruntime,int8,codec]'
	touch $@

install: $(VENV)/.installed

# The demo catalog's source: Debian's sweethome3d-furniture (about 120 MB of real furniture models).
$(DEMO_DATA):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends sweethome3d-furniture

# The browser test drives Debian's Chromium (Playwright never downloads a browser of its own).
$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium

# Debian's plasma-workspace-wallpapers: KDE's wallpapers, eleven of them photographs (LGPL-3 / CC-BY-SA-4.0).
$(WALLPAPERS):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends plasma-workspace-wallpapers

demo: install $(DEMO_DATA)
	$(BIN)/lookalike demo

serve: install
	$(BIN)/lookalike serve

run: demo serve

# The Ray tests get a pytest process of their own.
test: install $(DEMO_DATA) $(CHROMIUM)
	$(BIN)/python -m pytest -m "not own_process"
	$(BIN)/python -m pytest -m own_process

lint: install
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check --select E9,F app cli demo models training indexer bench tests

bench-quality: demo
	$(BIN)/python bench/demo_quality.py

# Lookalike's vector layer beside FAISS HNSW, hnswlib, Qdrant, LanceDB and pgvector (README: peers)
bench-peers: install
	$(BIN)/pip install -e '.[bench]'
	$(BIN)/python bench/peers.py --size 100000

bench-shopper: demo $(WALLPAPERS)
	$(BIN)/python bench/shopper_quality.py

# Retrains the packaged localiser (models/weights/localiser.pt); `make run` uses the committed file as it is.
train-detector: demo $(WALLPAPERS)
	$(BIN)/lookalike train-detector

clean:
	rm -rf $(VENV) data
