#!/usr/bin/env bash
# Installs the built tree into a temporary prefix, builds examples/consumer against it with
# find_package(fetalhc), and runs it on the installed model; checks that the core component alone
# looks for none of the server's packages and that COMPONENTS server gives fetalhc::fetalhc_server.
# Usage: install_consumer_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in bin/fetalhc include/fetalhc/measure.h share/fetalhc/models/fetalhc_unet.pt share/fetalhc/models/fetalhc_head_check.pt lib/cmake/fetalhc/fetalhcConfig.cmake; do
  [ -e "$tmp/prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
cmake -S "$src/examples/consumer" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
# The core component alone finds only what the core library links: not the server's packages.
if grep -q "^PQXX_FOUND\|^HTTPLIB_FOUND\|^SQLite3_INCLUDE_DIR\|^spdlog_DIR" "$tmp/consumer/CMakeCache.txt"; then
  echo "FAIL: find_package(fetalhc) without components looked for the server's packages"
  grep "^PQXX_FOUND\|^HTTPLIB_FOUND\|^SQLite3_INCLUDE_DIR\|^spdlog_DIR" "$tmp/consumer/CMakeCache.txt"
  exit 1
fi
# The server component gives fetalhc::fetalhc_server (configured only: its packages are found).
mkdir -p "$tmp/server_consumer"
cat >"$tmp/server_consumer/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.22)
project(fetalhc_server_consumer LANGUAGES CXX)
find_package(fetalhc 0.1 REQUIRED COMPONENTS server)
if(NOT TARGET fetalhc::fetalhc_server OR NOT TARGET fetalhc::fetalhc)
  message(FATAL_ERROR "find_package(fetalhc COMPONENTS server) gave no fetalhc::fetalhc_server")
endif()
CMAKE
cmake -S "$tmp/server_consumer" -B "$tmp/server_consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null ||
  { echo "FAIL: find_package(fetalhc COMPONENTS server)"; exit 1; }
cmake --build "$tmp/consumer" -j2 >/dev/null
out=$("$tmp/consumer/fetalhc_consumer" "$tmp/prefix/share/fetalhc/models/fetalhc_unet.pt")
echo "$out"
# Ramanujan II of a 30 x 25 mm semi-axis ellipse is 173.1 mm.
grep -q "ellipse HC 173.1 mm" <<<"$out" || { echo "FAIL: wrong HC from the installed library"; exit 1; }
grep -q "parameters" <<<"$out" || { echo "FAIL: the installed model did not load"; exit 1; }
# The installed CLI finds the installed model by itself (no source tree, no FETALHC_MODEL).
# The installed CLI defaults to the model installed beside it, not to the source tree's.
help=$(cd "$tmp" && env -u FETALHC_MODEL "$tmp/prefix/bin/fetalhc" measure --help)
grep -q "$tmp/prefix/share/fetalhc/models/fetalhc_unet.pt" <<<"$help" ||
  { echo "FAIL: the installed CLI does not default to the installed model"; echo "$help"; exit 1; }
echo "install and find_package(fetalhc) consumer: ok"
