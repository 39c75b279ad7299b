#!/usr/bin/env bash
# The llama.cpp peer: the same SMC workload as tsmc's side-by-side benchmark, on llama.cpp's CPU
# engine (prebuilt libllama from the PyPI package llama-cpp-py-sync), 2 threads.
#   benches/peers/llamacpp/run.sh --k 16 64 256 --t 20 --repeats 3 --warmup 1 --json-out peer.json
# First use creates a venv in $TSMC_PEER_VENV (default ~/.cache/tsmc/peers/llamacpp-venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${TSMC_PEER_VENV:-$HOME/.cache/tsmc/peers/llamacpp-venv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "llama-cpp-py-sync==0.11739" "numpy>=2,<2.5"
fi
# The wheel's libraries import four glibc 2.38 symbols; Debian 12 has 2.36 (see patch_glibc238.py).
"$venv/bin/python" "$here/patch_glibc238.py" >/dev/null
exec "$venv/bin/python" "$here/llamacpp_smc.py" "$@"
