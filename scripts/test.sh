#!/usr/bin/env bash
# Set up everything the test suite needs and run it: `scripts/test.sh [pytest args]`.
# As root it installs the Debian packages the tests start for real (DCMTK, Redis, PostgreSQL,
# Orthanc); the tests start and stop their own servers on loopback.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CXR_NODE_EXTRAS=test
export CXR_NODE_APT="dcmtk redis-server postgresql orthanc orthanc-dicomweb"
source "$repo_root/scripts/bootstrap.sh"
cd "$repo_root"
bash scripts/install_viewer.sh   # Chromium and the built OHIF viewer for tests/e2e/test_ohif_display.py
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=20 "$@"
