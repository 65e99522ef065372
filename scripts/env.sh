# Source me: creates ./.venv (once) with the project, torch pinned for these machines, and extras.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$ROOT/.venv"
STAMP="$VENV/.mcrecall-installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $("$PY" --version)"
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "==> installing mcrecall and its dependencies into .venv (first time: ~2 minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first and exactly: any other version would pull a multi-GB CUDA build here
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[local,test]"
    touch "$STAMP"
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
VPY="$VENV/bin/python"
