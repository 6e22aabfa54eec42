# mtseg: `make demo` trains experiment 7 on phantoms; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch: its CUDA build (the local version +$(TORCH_CUDA), from PyTorch's wheel index) when
# nvidia-smi lists a GPU, the CPU build otherwise; TORCH_SPEC overrides both. `make torch-spec` prints the choice.
TORCH_VERSION := 2.13.0
TORCH_CUDA ?= cu128
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q "^GPU" && echo yes)
ifeq ($(HAS_GPU),yes)
TORCH_SPEC ?= torch==$(TORCH_VERSION)+$(TORCH_CUDA) --extra-index-url https://download.pytorch.org/whl/$(TORCH_CUDA)
else
TORCH_SPEC ?= torch==$(TORCH_VERSION)
endif
EXPERIMENT ?= brain_breast_cta
# every experiment of mtseg/tasks.py (the one list), evaluated when a sweep starts
EXPERIMENTS = $(shell $(BIN)/python -c "from mtseg.tasks import EXPERIMENTS; print(','.join(EXPERIMENTS))")
ARGS ?=

.PHONY: install torch-spec lock demo demo-paper train sweep figures test bench gpu-check data-brain clean

install: $(VENV)/.installed

# constraints.txt pins every other package to the versions CI tested, so a clone made later
# installs what passed; `make lock` rewrites it from a fresh, unpinned install (the one upgrade command).
$(VENV)/.installed: pyproject.toml Makefile constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

torch-spec:
	@echo "$(TORCH_SPEC)"

lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip && .venv-lock/bin/pip install --quiet $(TORCH_SPEC)
	.venv-lock/bin/pip install --quiet -e ".[dev]"
	.venv-lock/bin/pip freeze --exclude-editable > .venv-lock/freeze.txt  # fails the recipe if pip fails
	(echo "# The exact versions CI tested (pip constraints for \`make install\`; torch comes from TORCH_SPEC)."; \
	 echo "# Regenerate after changing dependencies: make lock"; \
	 grep -v "^mtseg\|^torch\( @\|==\)" .venv-lock/freeze.txt) > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

# Experiment 7 on phantoms, compute-sharing training (training=cubes), CPU-sized: conf/preset/demo.yaml
# (conf/preset/cpu_demo.yaml with a lower learning rate and oblique, thick-slice training copies).
demo: install
	$(BIN)/python -m mtseg.train +experiment=brain_breast_cta +preset=demo $(ARGS)

# The same experiment trained the paper's way (training=patch), CPU-sized: conf/preset/cpu_demo_paper.yaml.
demo-paper: install
	$(BIN)/python -m mtseg.train +experiment=brain_breast_cta +preset=cpu_demo_paper $(ARGS)

# One experiment: make train EXPERIMENT=brain ARGS="schedule.minibatches_per_task=5000"
train: install
	$(BIN)/python -m mtseg.train +experiment=$(EXPERIMENT) $(ARGS)

# All seven experiments as one Hydra multirun (one W&B group); repeats: ARGS="seed=0,1". On a GPU where
# `make gpu-check` measured the seven at once faster than one after another, at once (joblib launcher),
# unless ARGS names a hydra/launcher.
SWEEP_LAUNCHER = $(if $(findstring hydra/launcher,$(ARGS)),,$(shell $(BIN)/python -m mtseg.gpu_check --launcher --out outputs/gpu_check))
sweep: install
	$(BIN)/python -m mtseg.train -m +experiment=$(EXPERIMENTS) $(SWEEP_LAUNCHER) $(ARGS)

# Fig. 2, Fig. 3 and the results table of a sweep (default: the newest, by modification time) or of runs:
# make figures RUNS="outputs/sweeps/<date_time>" ARGS="--out <folder>"
RUNS ?= $(shell ls -dt outputs/sweeps/*/ 2>/dev/null | head -1)
figures: install
	@test -n "$(RUNS)" || { echo "no sweep under outputs/sweeps: run make sweep first or pass RUNS=<run or sweep folders>"; exit 1; }
	$(BIN)/python -m mtseg.figures $(RUNS) $(ARGS)

test: install
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

# Everything worth measuring on a GPU, in one command (mtseg/gpu_check.py): outputs/gpu_check/gpu_check.{json,md}
gpu-check: install
	$(BIN)/python -m mtseg.gpu_check --out outputs/gpu_check $(ARGS)

bench: install
	$(BIN)/python -m mtseg.bench $(ARGS)

# The real brain cohort (brain templates with atlas labels) as an nnU-Net data set under data/nnunet_raw;
# cached, rebuilt only when its inputs change. Train on it: make train EXPERIMENT=brain ARGS="data/brain=templates"
data-brain: install
	$(BIN)/python -m mtseg.data build brain-templates $(ARGS)

clean:
	rm -rf outputs .pytest_cache
