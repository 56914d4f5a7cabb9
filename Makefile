# CroCo lab — every target creates the environment first when it is missing.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install pretrain pretrain-selfpairs smoke test test-fast test-slow bench bench-grid gpu-check lint clean habitat-data \
	results study-crossview study-mask-overlap study-decoders study-init

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# pip takes torch 2.14.1 / torchvision 0.29.1 from this machine's local wheel store when it has one.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PY) -m pip install --quiet -e ".[dev,slurm]" 2>&1 | { grep -v "^WARNING: Location" || true; }; \
		test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned dependencies (torch 2.14.1, torchvision 0.29.1, ...)

pretrain: $(STAMP)  ## the paper's pretraining on the embedded data (generated into data/ in the background on first use)
	$(PY) train.py experiment=pretrain

# The CPU pretraining that flow_synthetic and pose_synthetic start from (docs/downstream.md, "Flow and relative
# pose"): experiment=crossview_selfpairs (which makes data/crossview and its self-pairs on first use), then two
# continuations of 3,072 steps at half the learning rate, each from the previous run's weights.
SELFPAIRS_CONTINUE := trainer.max_epochs=12 optim.epochs=12 optim.lr=5e-4
pretrain-selfpairs: $(STAMP)  ## half self-pairs, 9,728 steps: the decoder localises; flow/pose start here (~2 h)
	$(PY) train.py experiment=crossview_selfpairs run_name=crossview_selfpairs
	$(PY) train.py experiment=crossview_selfpairs run_name=crossview_selfpairs_2 $(SELFPAIRS_CONTINUE) \
		task.init_from=logs/runs/crossview_selfpairs/croco_official.pth
	$(PY) train.py experiment=crossview_selfpairs run_name=crossview_selfpairs_3 $(SELFPAIRS_CONTINUE) \
		task.init_from=logs/runs/crossview_selfpairs_2/croco_official.pth

smoke: $(STAMP)  ## a tiny CroCo that visibly learns, and uses view 2, on a CPU in about 6 minutes
	$(PY) train.py experiment=smoke

test: $(STAMP)  ## every test, slow ones included (what CI runs; ~5 min on 2 idle cores)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the suite without the tests marked slow (>20 s each: DDP, multirun, overfitting)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: $(STAMP)  ## only the slow tests
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks: model step throughput, data pipeline, pair generation (rows go to docs/benchmarks.md)
	$(PY) -m croco.bench.model --variants official project project-compiled
	$(PY) -m croco.bench.model --variants official project project-compiled --precision bf16
	$(PY) -m croco.bench.data
	$(PY) -m croco.bench.generate

gpu-check: $(STAMP)  ## on a CUDA machine: the tests marked gpu, then v1 and v2-L bf16 step benchmarks (~5 min)
	PY=$(PY) scripts/gpu_check.sh

# Every model preset at 224 and at a non-square binocular size, fp32 and bf16, eager and compiled (hours on a CPU;
# minutes on a GPU: BENCH_ARGS='--device cuda'). One bench process per cell, rows to docs/benchmarks.md.
BENCH_PRESETS ?= croco_v1 croco_v2_base_small croco_v2_base_base croco_v2_large_base
BENCH_SIZES ?= 224 "224 320"
BENCH_ARGS ?=
bench-grid: $(STAMP)  ## the training-step bench over presets x sizes x precisions, eager and compiled
	@for preset in $(BENCH_PRESETS); do for size in $(BENCH_SIZES); do for precision in fp32 bf16; do \
		$(PY) -m croco.bench.model --preset $$preset --img $$size --precision $$precision \
			--variants official project project-compiled $(BENCH_ARGS) || exit 1; \
	done; done; done

# The paper's findings at the smoke scale (docs/results.md): each target runs the study's jobs that are not done
# yet (logs/studies/jobs/*.done; a relaunch goes on where it stopped), then writes its figures and its part
# of docs/results.md. STUDY_JOBS=2 runs two jobs of a stage at a time, each on half of the cores.
# STUDY_SCALE=paper runs the same studies with the paper's networks and recipes (GPUs; docs/results_paper.md).
STUDY_JOBS ?= 1
STUDY_SCALE ?= cpu
study-crossview: $(STAMP)  ## cross-view versus single-view (MAE-like) completion, then depth and stereo (~40 min)
	$(PY) -m croco.studies crossview --scale $(STUDY_SCALE) --jobs $(STUDY_JOBS)

study-mask-overlap: $(STAMP)  ## mask ratio x pair overlap, one Hydra multirun + linear probes (~50 min)
	$(PY) -m croco.studies mask_overlap --scale $(STUDY_SCALE) --jobs $(STUDY_JOBS)

study-decoders: $(STAMP)  ## CrossBlock versus CatBlock decoders at equal compute (~15 min)
	$(PY) -m croco.studies decoders --scale $(STUDY_SCALE) --jobs $(STUDY_JOBS)

study-init: $(STAMP)  ## pretrained versus scratch on depth, segmentation and stereo, three seeds (~2 h)
	$(PY) -m croco.studies init --scale $(STUDY_SCALE) --jobs $(STUDY_JOBS)

results: $(STAMP)  ## every study above, then docs/results.md
	$(PY) -m croco.studies all --scale $(STUDY_SCALE) --jobs $(STUDY_JOBS)

# habitat-sim is conda-only, so this target runs in the conda environment of environment-habitat.yml (its
# `python`), not in .venv. Scene dataset under data/habitat-sim-data/scene_datasets/<dataset>/ -> one shard per
# scene in HABITAT_OUT -> HABITAT_OUT/metadata.json (cameras only, shareable; `python generate.py source=habitat
# metadata=...` renders the same pairs again). Resumable: rerun the same command. Cluster: pass
# HABITAT_ARGS='num_jobs=16 job_index=3', or any other generate.py key (pairs_per_scene=..., 'scenes=[...]').
HABITAT_PY ?= python
SCENE_DATASET ?= habitat_test_scenes
SPLIT ?= null
HABITAT_OUT ?= data/habitat_$(SCENE_DATASET)
HABITAT_ARGS ?=
habitat-data:  ## habitat-sim pairs: SCENE_DATASET=hm3d|scannet|replica|replicacad|gibson|habitat_test_scenes SPLIT=...
	@$(HABITAT_PY) -c "import habitat_sim" >/dev/null 2>&1 || { echo "habitat-data: habitat-sim is not \
	installed for $(HABITAT_PY); run: conda env create -f environment-habitat.yml && conda activate croco-habitat" >&2; \
	exit 1; }
	$(HABITAT_PY) generate.py source=habitat scene_dataset=$(SCENE_DATASET) split=$(SPLIT) out=$(HABITAT_OUT) \
		$(HABITAT_ARGS)
	$(HABITAT_PY) -m croco.synth.metadata export $(HABITAT_OUT) --out $(HABITAT_OUT)/metadata.json

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check src tests train.py generate.py

clean:  ## caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
