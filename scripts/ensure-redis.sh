#!/usr/bin/env bash
# Makes sure redis-server is on PATH: the tests and the demo start private copies of it.
# Installs it from Debian's packages when run as root; otherwise says what to do.
set -euo pipefail
if command -v "${BALLAST_REDIS_SERVER:-redis-server}" >/dev/null 2>&1; then
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
