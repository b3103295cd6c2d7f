#!/usr/bin/env bash
# Makes sure redis-server is on PATH: the tests and the demo start private copies of it.
# Installs it from Debian's packages when run as root; otherwise says what to do.
set -euo pipefail
server="${BALLAST_REDIS_SERVER:-redis-server}"

# ballast's Lua is a Redis function library: Redis 7.0 or later. Checked after an install
# too: an old distribution's package can be too old.
check_version() {
  major=$("$server" --version 2>/dev/null | sed -n 's/.* v=\([0-9]*\)\..*/\1/p' || true)
  if [ -n "$major" ] && [ "$major" -lt 7 ]; then
    echo "$server is version $major; ballast needs redis-server 7.0 or later (Redis functions)" >&2
    exit 1
  fi
  exit 0
}

if command -v "$server" >/dev/null 2>&1; then
  check_version
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "$server is missing: installing redis-server with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  command -v "$server" >/dev/null 2>&1 && check_version
fi
echo "$server is missing: run 'sudo apt-get install -y redis-server' (or put redis-server on PATH, or set BALLAST_REDIS_SERVER to its path)" >&2
exit 1
