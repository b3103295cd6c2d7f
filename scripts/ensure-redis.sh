#!/usr/bin/env bash
# Makes sure redis-server is on PATH: the tests and the demo start private copies of it.
# Installs it from Debian's packages when run as root; otherwise says what to do.
set -euo pipefail
server="${BALLAST_REDIS_SERVER:-redis-server}"
if command -v "$server" >/dev/null 2>&1; then
  # ballast's Lua is a Redis function library: Redis 7.0 or later.
  major=$("$server" --version 2>/dev/null | sed -n 's/.* v=\([0-9]*\)\..*/\1/p' || true)
  if [ -n "$major" ] && [ "$major" -lt 7 ]; then
    echo "$server is version $major; ballast needs redis-server 7.0 or later (Redis functions)" >&2
    exit 1
  fi
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing: installing it with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  command -v redis-server >/dev/null && exit 0
fi
echo "redis-server is missing: run 'sudo apt-get install -y redis-server' (or put redis-server on PATH, or set BALLAST_REDIS_SERVER to its path)" >&2
exit 1
