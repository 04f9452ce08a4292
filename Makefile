# Convenience targets; the README's two scripts are the set-up a newcomer needs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: studio test package package-check bench clean

studio:
	bash scripts/studio.sh

test:
	bash scripts/test.sh

# A one-folder PyInstaller build in dist/qlora-studio, then a smoke test of the built program.
package:
	bash scripts/setup.sh
	$(PY) -m pip install --quiet "pyinstaller>=6.10"
	$(VENV)/bin/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/qlora-studio.spec
	$(MAKE) package-check

package-check:
	dist/qlora-studio/qlora-studio --version
	dist/qlora-studio/qlora-studio gpus
	dist/qlora-studio/qlora-studio gpus --json

# Every CPU benchmark in turn; JSON results in benchmarks/results/<date>/ (docs/benchmarks.md).
bench:
	bash scripts/setup.sh --dev
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build dist
