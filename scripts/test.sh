#!/usr/bin/env bash
# The whole test suite (real broker process, real LMDB, real Milvus Lite). Extra args go to pytest.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
set +e
"$VPY" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests - that is a failure here" >&2
    exit 1
fi
exit "$rc"
