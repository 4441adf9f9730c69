#!/usr/bin/env bash
# Installs fetalhc's build dependencies from Debian 12 and builds everything into build/.
# Usage: scripts/setup.sh            (then: build/fetalhc --help)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config libtorch-dev libopencv-dev libcli11-dev
          nlohmann-json3-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev chromium chromium-driver nodejs
          libcpp-httplib-dev libsqlite3-dev libssl-dev zlib1g-dev libdeflate-dev libpng-dev libbrotli-dev libjs-chart.js
          libdcmtk-dev dcmtk dicom3tools libopenjp2-7-dev libpqxx-dev postgresql orthanc orthanc-dicomweb
          clang libfuzzer-14-dev
          nginx curl jq yq openssl systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The FHIR validation test's npm packages (pinned in tests/fhir/package-lock.json); without them that
# test is reported as skipped.
if command -v npm >/dev/null; then
  npm ci --prefix tests/fhir --no-audit --no-fund --silent >/dev/null 2>&1 ||
    echo "setup: npm ci in tests/fhir failed: the fhir_validate test will be skipped" >&2
fi
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
echo "setup: built build/fetalhc" >&2
