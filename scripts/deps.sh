#!/usr/bin/env bash
# Installs the Debian packages moongate needs to build, test and benchmark, idempotently:
# only what is missing is installed, so `make` stays fast on a machine that has everything.
# Never install Debian's libluajit-5.1-dev: it conflicts with libluajit2-5.1-dev (OpenResty's
# LuaJIT branch) and apt would silently remove the latter and the nginx Lua module.
set -euo pipefail

BUILD_PKGS="make gcc pkg-config libluajit2-5.1-dev luajit2 libev-dev libhttp-parser-dev libssl-dev libyaml-dev libpcre2-dev libc-ares-dev"
TEST_PKGS="lua-cjson lua-busted lua-socket luarocks openssl curl wrk redis-server slowhttptest testssl.sh nginx"
EXTRA_PKGS="clang libclang-rt-14-dev valgrind libnginx-mod-http-lua clang-format procps iproute2"

want="$BUILD_PKGS"
case "${1:-build}" in
  build) ;;
  test) want="$want $TEST_PKGS" ;;
  all) want="$want $TEST_PKGS $EXTRA_PKGS" ;;
  *) echo "usage: $0 [build|test|all]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >&2
