#!/usr/bin/env bash
# The end-to-end demo on embedded defaults (local broker, Milvus Lite, synthetic event stream).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec "$VPY" -m mcrecall demo "$@"
