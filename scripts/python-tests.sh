#!/usr/bin/env bash
# The Python package's tests (fastdllm-py/tests) in a fresh virtual environment: maturin builds
# the extension (dev profile, its own target directory: fastdllm-py is outside the workspace),
# then pytest. The CLI-equality tests call target/debug/fastdllm (built by `cargo test
# --workspace`; built here when missing). Needs python3 with venv + pip and PyPI.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/target/py-venv}
export FASTDLLM_BIN=${FASTDLLM_BIN:-$(realpath -m "${CARGO_TARGET_DIR:-target}/debug/fastdllm")}
[[ -x $FASTDLLM_BIN ]] || cargo build -p fastdllm-cli --bin fastdllm --quiet
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "maturin>=1.9,<2" numpy pytest
# shellcheck disable=SC1091
. "$VENV/bin/activate"
maturin develop --quiet -m fastdllm-py/Cargo.toml
python -m pytest -q fastdllm-py/tests
