#!/usr/bin/env bash
# One command for the GPU figures (bench/gpu_suite.py says what it measures); at most ~10 minutes on one GPU.
#
#   bash bench/gpu_suite.sh                 # on a CUDA machine; results in $OUT (default bench/out/gpu_suite)
#   SMOKE=1 bash bench/gpu_suite.sh         # every part on the CPU at toy sizes
#
# The GPU machine has no network and lacks datasets (the training loop's data) and wandb (not needed:
# --no_wandb). Prepare here, once: the wheels and the local data go into folders git ignores, and the device
# run carries them (carry: [".whl", ".gpu_data"]):
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18
#   cp -r ../shared/data .gpu_data
# The suite installs .whl/*.whl (if present) into /tmp/site and reads the data from .gpu_data (if present).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: the wheels in .whl could not be installed" >&2; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[[ -d .gpu_data && -z "${ALPHADECAY_DATA_DIR:-}" ]] && export ALPHADECAY_DATA_DIR="$PWD/.gpu_data"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for module in torch transformers safetensors; do
    python3 -c "import $module" 2>/dev/null || { echo "error: python package '$module' is missing; install it or carry its wheel in .whl" >&2; exit 2; }
done
exec python3 bench/gpu_suite.py "$@"
