# Two-command set-up: `make run` and `make test` both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test test-install test-tunix lint format bench notebooks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train]"
	touch $(STAMP)

$(STAMP_TEST): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[all,test]"
	touch $(STAMP_TEST)

# The main job on its quick default: the pre-registered Entropy Mechanism study
# (experiments/entropy_mechanism/study.py, preset `quick`: 5 initialisations x {none, lr = 0},
# SFT warm starts, 30 GRPO steps, evaluations, claim-3 probes), then its analysis: verdicts for
# claims 1 and 3 in runs/entropy_mechanism/quick/ (RESULTS.md, summary.json, plots/). A killed run
# resumes: finished jobs and cached warm starts (runs/_warmstarts) are kept, the interrupted job
# continues from its last checkpoint.
run: $(STAMP)
	$(PY) -m experiments.entropy_mechanism.study run
	$(PY) -m experiments.entropy_mechanism.study analyse

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP_TEST)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not install"

# The losses-only install: a fresh venv with `pip install entropylab` (core deps only, built with
# the declared setuptools floor) runs the README losses example (~1-3 min: pip installs jax).
test-install: $(STAMP_TEST)
	$(VENV)/bin/pytest -q -n 0 -m install tests/losses/readme_example_test.py

# entropylab.integrations.tunix against tunix itself (tests/integrations/tunix_test.py, with the
# source tree on PYTHONPATH), never inside .venv. tunix 0.1.7 asks only flax>=0.11.1 and
# orbax-checkpoint>=0.12 of the JAX stack, so its venv sees .venv's jax/flax/optax/orbax through a
# .pth file and adds tunix plus the modules its GRPO learner imports (--no-deps: its data and
# model-hub dependencies, datasets/tensorflow_datasets/kagglehub/... ~1.6 GB, are never imported
# here; installing them took 7-8 min, this takes seconds). JAX's compilation cache lives in it.
TUNIX_VENV ?= .venv-tunix
TUNIX_STAMP := $(TUNIX_VENV)/.installed-tunix-0.1.7
TUNIX_PKGS := google-tunix==0.1.7 google-metrax==0.2.4 clu==0.0.12 wrapt==2.5.2 \
  tensorboardX==2.6.5 jaxtyping==0.3.11 wadler_lindig==0.1.8 sentencepiece==0.2.3 \
  perfetto==0.59.1 pandas==3.1.1

$(TUNIX_STAMP): $(STAMP_TEST)
	$(PYTHON) -m venv $(TUNIX_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(TUNIX_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_entropylab_venv.pth"
	$(TUNIX_VENV)/bin/pip install --quiet --no-deps $(TUNIX_PKGS)
	touch $@

test-tunix: $(TUNIX_STAMP)
	ENTROPYLAB_TUNIX_TESTS=1 JAX_PLATFORMS=cpu PYTHONPATH=$(CURDIR) \
	  JAX_COMPILATION_CACHE_DIR=$(TUNIX_VENV)/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  $(TUNIX_VENV)/bin/python -m \
	  pytest -q -p no:cacheprovider -c tests/integrations/pytest.ini --rootdir tests/integrations \
	  --confcutdir tests/integrations tests/integrations

bench: $(STAMP_TEST)
	$(PY) -m bench.entropy_memory
	$(PY) -m bench.train_step
	$(PY) -m bench.rollout
	$(PY) -m bench.grpo_step

# Re-execute the notebooks (headless, on the committed study data by default) and save them with
# their outputs, figures included; see "Notebooks" in README.md.
notebooks: $(STAMP_TEST)
	$(PY) notebooks/execute.py notebooks/entropy_laws.ipynb notebooks/token_entropy.ipynb \
	  notebooks/attention_entropy.ipynb notebooks/entropy_mechanism_full.ipynb

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
