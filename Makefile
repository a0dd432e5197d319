# Entry points for a fresh clone: `make demo` runs the main job end to end, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-data

.PHONY: demo test install system-deps clean-demo

# The virtual environment is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $@

install: system-deps $(VENV)/.installed

# ffmpeg encodes the synthetic clips and the test videos; Debian's package is used when missing.
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
		else echo "ffmpeg is missing: install it (sudo apt-get install ffmpeg) and rerun" >&2; exit 1; fi; }

demo: install
	$(PY) scripts/demo.py --workdir $(DEMO_DIR)

test: install
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO_DIR)
