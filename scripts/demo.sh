#!/usr/bin/env bash
# Set up cxr-node and run the demo on the embedded default (SQLite, in-process tasks, bundled
# demo models): a synthetic chest study is sent to the node, analysed, and its SEG and SR written.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CXR_NODE_EXTRAS=""
export CXR_NODE_APT=""
source "$repo_root/scripts/bootstrap.sh"
cd "$repo_root"
exec .venv/bin/cxr-node demo "$@"
