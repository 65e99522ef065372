#!/usr/bin/env bash
# The whole test suite (real broker process, real LMDB, real Milvus Lite). Extra args go to pytest.
#   bash scripts/test.sh           everything (what .ci/run calls)
#   bash scripts/test.sh --fast    the contributors' lane: every test not marked `slow`
# One pytest-xdist worker per core (-n auto): most tests wait on brokers, servers and child
# processes, so two workers on two cores halve the wall time. `-n 0` runs in one process.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
args=()
workers=(-n auto)
for a in "$@"; do
    case "$a" in
        --fast) args+=(-m "not slow") ;;
        -n|-n*|--numprocesses*) workers=(); args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done
set +e
"$VPY" -m pytest -q "${workers[@]}" "${args[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests - that is a failure here" >&2
    exit 1
fi
exit "$rc"
