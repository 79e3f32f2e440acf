#!/usr/bin/env bash
# Start dockerd if it is not answering, wait for its socket, and build the test image
# treescale-busybox:test (no registry is reachable: `docker import` of a busybox rootfs).
# Idempotent: safe to run again; tests/dockerkit.py runs it when the engine is absent.
set -euo pipefail

IMAGE=treescale-busybox:test
LOG=${DOCKERD_LOG:-/var/log/treescale-dockerd.log}
BUSYBOX=$(command -v busybox || true)
for candidate in /bin/busybox /usr/bin/busybox; do
  [ -x "$candidate" ] && BUSYBOX=$candidate
done

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { echo "dockerd missing: apt-get install docker.io" >&2; exit 1; }
  echo "starting dockerd (log: $LOG)"
  nohup dockerd >>"$LOG" 2>&1 &
  pid=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || break  # dockerd gave up: say why at once
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "dockerd is not answering; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  [ -n "$BUSYBOX" ] || { echo "busybox missing: apt-get install busybox-static" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/tmp" "$root/www" "$root/etc"
  cp "$BUSYBOX" "$root/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  echo "treescale busybox" > "$root/www/index.html"
  echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  echo "built $IMAGE"
fi
