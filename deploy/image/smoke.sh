#!/bin/sh
# Smoke test of an installed mxfs (.ci/image-check runs it inside its chroot, as root, with
# /dev/fuse): a server on 127.0.0.1 serving a small local model, a node daemon mounting it with
# FUSE, every file read through the mount compared with the origin, and SIGTERM must unmount.
set -eu
WORK=$(mktemp -d /tmp/mxfs-smoke.XXXXXX)
MODEL=smoke-org/smoke-model
MNT=$WORK/mnt
server_pid=""
daemon_pid=""

say() { echo "smoke: $*"; }

cleanup() {
  rc=$?
  for pid in $daemon_pid $server_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  if grep -qs " $MNT fuse" /proc/self/mounts; then
    fusermount3 -u -z "$MNT" || umount -l "$MNT" || true
  fi
  if [ "$rc" != 0 ]; then
    for log in "$WORK/server.log" "$WORK/daemon.log"; do
      [ -f "$log" ] && { echo "--- $log (tail)"; tail -n 40 "$log"; }
    done
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s, fail after SECONDS
wait_until() {
  limit=$(( $1 * 5 )); what=$2; shift 2
  i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le "$limit" ] || { say "timed out waiting for $what"; return 1; }
    sleep 0.2
  done
}

free_port() {
  /opt/mxfs/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mounted() { grep -qs " $MNT fuse" /proc/self/mounts; }
# a child that exited stays a zombie (state Z) until waited for
not_running() { [ ! -e "/proc/$1" ] || grep -q ') Z ' "/proc/$1/stat"; }

origin=$WORK/origin/$MODEL
mkdir -p "$origin/extra" "$MNT"
printf '{"model_type": "llama", "note": "mxfs image smoke test"}\n' >"$origin/config.json"
head -c 3000000 /dev/urandom >"$origin/weights.bin"
head -c 1000 /dev/urandom >"$origin/extra/notes.txt"

port=$(free_port)
data_port=$(free_port)
mxfs server --host 127.0.0.1 --port "$port" --data-port "$data_port" --metrics-port 0 \
  --cache-dir "$WORK/server-cache" --models-dir "$WORK/origin" >"$WORK/server.log" 2>&1 &
server_pid=$!
export MODEL_EXPRESS_URL="127.0.0.1:$port"
wait_until 60 "the server to list $MODEL" mxfs model files "$MODEL"
say "server up on $MODEL_EXPRESS_URL"

mxfs mount "$MNT" --server "$MODEL_EXPRESS_URL" --cache-dir "$WORK/node-cache" --metrics-port 0 \
  --model "$MODEL" >"$WORK/daemon.log" 2>&1 &
daemon_pid=$!
wait_until 60 "the mount to show $MODEL" test -f "$MNT/$MODEL/config.json"
say "mounted at $MNT"

for rel in config.json weights.bin extra/notes.txt; do
  cmp "$origin/$rel" "$MNT/$MODEL/$rel"
  say "read $rel through the mount: same bytes as the origin"
done
mxfs status "$MNT"

kill -TERM "$daemon_pid"
wait_until 30 "the daemon to exit on SIGTERM" not_running "$daemon_pid"
status=0
wait "$daemon_pid" || status=$?
[ "$status" = 0 ] || { say "the daemon exited with $status on SIGTERM"; exit 1; }
if mounted; then
  say "the daemon exited but $MNT is still mounted"
  exit 1
fi
daemon_pid=""
say "SIGTERM unmounted $MNT"
kill -TERM "$server_pid"
wait_until 30 "the server to exit" not_running "$server_pid"
server_pid=""
rm -rf "$WORK"
say "OK"
