# Two commands from a fresh machine with only python3:
#   make test   create/reuse .venv, install jaxcrl[test,interop] editable, run the suite
#   make demo   create/reuse .venv, run the main job (quickstart, then a short CRL fit)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/quickstart

.PHONY: test test-all demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,interop,text]'
	touch $(STAMP)

# One pytest worker per core, whole files per worker (module fixtures built once);
# `make test PYTEST_FLAGS=` runs serially.
PYTEST_FLAGS ?= -n auto --dist loadfile
# The tests run tiny shapes, so XLA's compile time dominates them: LLVM at -O0 compiles
# them ~35% faster (tests/test_sae_auxk.py 36 -> 25 s; a toy SAE fit, a CRL fit and KV-cache
# generation 66 -> 41 s, same machine and load) and changes no result the tests check.
# `make test TEST_XLA_FLAGS=` compiles with XLA's defaults.
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0
# JAX's own switch for the same trade (it also skips LLVM's expensive passes): another ~11%
# off compile time (the tiny SAE-probing run: 59 -> 53 s of compiling). `make test TEST_JAX_DISABLE_OPT=0`
# turns it off.
TEST_JAX_DISABLE_OPT ?= 1

# One BLAS thread per pytest worker: with a worker per core busy, OpenBLAS's own threads
# spin against each other (the nonlinear DAG search on 60k rows: 64 s with the default
# threads beside a busy core, 6 s with one).
TEST_BLAS_THREADS ?= 1

# `make test` skips the tests marked slow (the notebooks and the 8-device subprocesses, see
# tests/conftest.py) to fit CI's 30 minutes on 2 cores; `make test-all` runs every test.
TEST_MARKS ?= not slow

test: $(STAMP)
	XLA_FLAGS="$(TEST_XLA_FLAGS) $$XLA_FLAGS" JAX_DISABLE_MOST_OPTIMIZATIONS=$(TEST_JAX_DISABLE_OPT) \
		OPENBLAS_NUM_THREADS=$(TEST_BLAS_THREADS) OMP_NUM_THREADS=$(TEST_BLAS_THREADS) \
		$(PY) -m pytest -q $(PYTEST_FLAGS) -m "$(TEST_MARKS)" tests

test-all:
	$(MAKE) test TEST_MARKS="slow or not slow"

# The main job: the quickstart (reference unmixings), then a short CRL run of the
# latent-SCM model against beta-VAE and iVAE (full-size runs: see BENCHMARKS.md).
demo: $(STAMP)
	$(PY) experiments/quickstart.py --out $(OUT)
	$(PY) experiments/crl_synthetic.py --out out/crl_demo --seeds 2 --steps 3000 \
		--samples-per-env 5000 --restarts 1

bench: $(STAMP)
	$(PY) experiments/bench/crl_seeds.py --out out/bench_crl_seeds.json
	$(PY) experiments/bench/lm_hooks.py --out out/bench_lm_hooks.json
	$(PY) experiments/bench/sae_speed.py --out out/bench_sae_speed.json
	$(PY) experiments/bench/lm_cache.py --out out/bench_lm_cache.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out
