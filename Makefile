# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create the virtual environment in .venv first if it is missing.
PY := .venv/bin/python
WORKDIR ?= /tmp/fit_jax_demo

.venv/done: pyproject.toml
	python3 -m pip install -q uv
	# --allow-existing: after a pyproject change, update the environment in place.
	uv venv --allow-existing --python python3 .venv
	uv pip install --python $(PY) --compile-bytecode -e '.[export,faces,eval,test]'
	# torch (CPU) comes from the local wheel through pip; converter tests only.
	uv pip install --python $(PY) pip
	$(PY) -m pip install -q torch==2.13.0
	touch .venv/done

setup: .venv/done

demo: .venv/done
	$(PY) -m fit_jax.main --config configs/demo.py --workdir $(WORKDIR)

test: .venv/done
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q

.PHONY: setup demo test
