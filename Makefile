# The two commands: `make demo` and `make test`. Both build .venv from nothing on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo venv lint grid bench clean

venv: $(STAMP)

# Reinstall when the package metadata changes. The `pose` extra (mediapipe) is part of the dev install so
# that CI runs the keypoint tests instead of skipping them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,pose]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/posereid demo --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check posereid tests

grid: $(STAMP)
	$(BIN)/posereid synth-grid --out docs/synthetic_grid.png

clean:
	rm -rf $(VENV) demo_out .pytest_cache
