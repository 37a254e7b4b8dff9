#!/usr/bin/env bash
# Set up cxr-node on a fresh Debian machine with Python 3.11: a virtualenv in .venv with the
# package installed editable. Sourced by scripts/demo.sh and scripts/test.sh.
#
#   CXR_NODE_EXTRAS   pip extras to install ("test" for the suite; empty for the product)
#   CXR_NODE_APT      Debian packages to install when running as root (space separated)
#   PYTHON            the interpreter to build the venv with (default: python3.11, else python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [ -n "${CXR_NODE_APT:-}" ]; then
    missing=""
    for pkg in $CXR_NODE_APT; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" -eq 0 ]; then
            echo "bootstrap: installing Debian packages:$missing"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
        else
            echo "bootstrap: these Debian packages are needed:$missing" >&2
            echo "bootstrap: run as root, or: sudo apt-get install$missing" >&2
            exit 1
        fi
    fi
fi

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
    if command -v python3.11 >/dev/null 2>&1; then python_bin=python3.11; else python_bin=python3; fi
fi
"$python_bin" - <<'PY' || { echo "bootstrap: cxr-node needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $python_bin"
    "$python_bin" -m venv .venv || {
        echo "bootstrap: venv creation failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade pip
spec="."
if [ -n "${CXR_NODE_EXTRAS:-}" ]; then spec=".[${CXR_NODE_EXTRAS}]"; fi
echo "bootstrap: installing cxr-node ($spec) into .venv (torch is large: a few minutes the first time)"
.venv/bin/python -m pip install -q -e "$spec"
