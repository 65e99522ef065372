#!/usr/bin/env bash
# Run a command next to a real Milvus standalone (PyPI `milvus`, tests/milvus_standalone.py),
# both inside a private network namespace (the server listens on ~9 ports on all interfaces).
# The command sees MCRECALL_BENCH_MILVUS_URI. Needs root (or unprivileged user namespaces: -r).
#   bash benchmarks/with_milvus_server.sh .venv/bin/python benchmarks/bench_serve.py \
#       --backends faiss milvus milvus_real
set -euo pipefail
cd "$(dirname "$0")/.."
exec unshare -n bash -c '
set -euo pipefail
ip link set lo up
base=$(mktemp -d /tmp/milvus-standalone.XXXXXX)
coproc SERVER { exec .venv/bin/python tests/milvus_standalone.py "$base/base" 19530 2>"$base/log"; }
pid=$SERVER_PID
trap "kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $base" EXIT
read -r -t 300 status uri <&"${SERVER[0]}" || { echo "milvus standalone did not start: $(tail -3 $base/log)" >&2; exit 1; }
[ "$status" = ready ] || exit 1
MCRECALL_BENCH_MILVUS_URI=$uri "$@"
' with_milvus_server "$@"
