#!/usr/bin/env bash
# Create the project's virtual environment (idempotent; `make` calls this).
#
# - A Python that already imports torch (a cluster's CUDA build, a conda env) keeps it:
#   the venv sees it through --system-site-packages and pip finds `torch>=2.3` satisfied.
# - Otherwise torch is installed FIRST and pinned (CPU build from this machine's disk),
#   before deepspeed, which would otherwise pull a multi-GB CUDA torch.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: $PYTHON already has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'); keeping it"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $TORCH_SPEC (CPU build on this machine) before anything that depends on it"
  "${pip[@]}" install "$TORCH_SPEC"
fi
echo "setup: installing ds-distil and its pinned dependencies into $VENV"
"${pip[@]}" install -c "$here/requirements/constraints.txt" -e "${here}[dev]"
"$VENV/bin/python" -c "import torch, deepspeed, transformers, webdataset; print('setup: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__, '| webdataset', webdataset.__version__)" 2>/dev/null
