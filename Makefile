# The two commands: `make demo` and `make test`. Both build .venv from nothing on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo venv lint grid bench clean generator-asset judge-asset gpu-wheels

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

# The promise is 10 minutes for the whole command, the install included: the demo gets what the install
# left of them (at least DEMO_MIN_MINUTES) and plans its stages to fit.
DEMO_MINUTES ?= 10
DEMO_MIN_MINUTES ?= 4
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory venv && \
	left=$$($(BIN)/python -c "import sys,time; print(max($(DEMO_MIN_MINUTES), $(DEMO_MINUTES) - (time.time() - $$start) / 60))") && \
	echo "make demo: $$left minutes left for the demo after the install" && \
	$(BIN)/posereid demo --out demo_out --budget-minutes $$left

lint: $(STAMP)
	$(BIN)/ruff check posereid studies tests
	$(BIN)/ruff format --check posereid studies tests

grid: $(STAMP)
	$(BIN)/posereid synth-grid --out docs/synthetic_grid.png

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# Reproduces the generator checkpoint shipped in posereid/assets/generator-small: the `small` preset trained
# on the train split of the demo's synthetic dataset (same SynthConfig and seed as `posereid demo`), in two
# stages of 3000 steps (42 + 45 min on the 2-core CPU): a first cosine schedule, then a second one from its
# EMA weights with another data order (seed 1); then the few-step fine-tune (about 22 quiet CPU-minutes;
# results/few_step): 512 trajectories of that flow model at DPM-Solver++ 20 steps, guidance 2, learnt as
# 1-, 2- and 4-step jumps, so the asset samples in one network call by default. The asset keeps one copy of
# each model's weights, the EMA one, as its plain weights file (the loader reads that file when there is
# no ema.safetensors).
ASSET_WORK ?= runs/generator-asset
ASSET_STEPS ?= 3000
ASSET_FINETUNE_STEPS ?= 3000
ASSET_FEWSTEP_STEPS ?= 1500
generator-asset: $(STAMP)
	rm -rf $(ASSET_WORK)/data
	$(BIN)/posereid synth-market $(ASSET_WORK)/data --train-ids 30 --test-ids 30 --per-camera 3 --cameras 4 \
		--distractors 20 --junk 5 --height 64 --width 32 --train-views 2 --seed 0
	$(BIN)/posereid train-generator --data $(ASSET_WORK)/data --annotations $(ASSET_WORK)/data/market-annotation-train.csv \
		--preset small --prediction-type flow --out $(ASSET_WORK)/train --steps $(ASSET_STEPS) --batch-size 16 \
		--lr 3e-4 --warmup-steps 200 --ema-decay 0.999 --checkpoint-every 250 --sample-every 500 --seed 0
	$(BIN)/posereid train-generator --data $(ASSET_WORK)/data --annotations $(ASSET_WORK)/data/market-annotation-train.csv \
		--init $(ASSET_WORK)/train/final --out $(ASSET_WORK)/finetune --steps $(ASSET_FINETUNE_STEPS) --batch-size 16 \
		--lr 2e-4 --warmup-steps 100 --ema-decay 0.999 --checkpoint-every 250 --sample-every 1000 --seed 1
	$(BIN)/posereid train-generator --data $(ASSET_WORK)/data --few-step-from $(ASSET_WORK)/finetune/final \
		--few-step-trajectories 512 --out $(ASSET_WORK)/fewstep --steps $(ASSET_FEWSTEP_STEPS) --batch-size 16 \
		--lr 1e-4 --warmup-steps 50 --ema-decay 0.995 --checkpoint-every 100 --sample-every 500 --seed 0
	rm -rf posereid/assets/generator-small && mkdir -p posereid/assets
	cp -r $(ASSET_WORK)/fewstep/final posereid/assets/generator-small
	for d in posereid/assets/generator-small posereid/assets/generator-small/few_step; do \
		mv -f $$d/ema.safetensors $$d/diffusion_pytorch_model.safetensors; done
	$(BIN)/python -c "from posereid.experiments.demo import write_asset_meta; write_asset_meta('posereid/assets/generator-small')"

# Wheels a lent GPU machine lacks (Python 3.12 there; torch, accelerate, transformers, safetensors are
# preinstalled). torchreid is published as an sdist only, so it is built here into a pure-Python wheel.
# The device commands that use them are in docs/GPU.md.
GPU_WHEELS := diffusers==0.42.1 importlib_metadata==10.2.0 faiss-cpu==1.15.1 gdown==6.5.1
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation torchreid==0.2.5 -w .whl
	du -sh .whl

# Reproduces the pose judge shipped in posereid/assets/pose-judge (issue 11): 5000 steps on fresh renders
# (seeds >= 10**6, disjoint from every dataset), 1720 s on one CPU thread; writes the held-out report too.
judge-asset: $(STAMP)
	rm -rf runs/pose-judge
	$(BIN)/posereid pose-judge train --out runs/pose-judge --steps 5000 --threads 1 \
		--eval-images 512 --no-progress
	rm -rf posereid/assets/pose-judge && mkdir -p posereid/assets/pose-judge results/pose_judge
	cp runs/pose-judge/config.json runs/pose-judge/diffusion_pytorch_model.safetensors runs/pose-judge/training.json \
		posereid/assets/pose-judge/
	cp runs/pose-judge/judge_report.md runs/pose-judge/judge_report.json results/pose_judge/
