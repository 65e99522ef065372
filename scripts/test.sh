#!/usr/bin/env bash
# The whole test suite (real broker process, real LMDB, real Milvus Lite). Extra args go to pytest.
#   bash scripts/test.sh           everything (what .ci/run calls)
#   bash scripts/test.sh --fast    the contributors' lane: every test not marked `slow`
source "$(dirname "$0")/env.sh"
cd "$ROOT"
args=()
for a in "$@"; do
    if [ "$a" = "--fast" ]; then args+=(-m "not slow"); else args+=("$a"); fi
done
set +e
"$VPY" -m pytest -q "${args[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests - that is a failure here" >&2
    exit 1
fi
exit "$rc"
