#!/usr/bin/env bash
# Install what the OHIF display test (tests/e2e/test_ohif_display.py) needs; idempotent.
#   - Debian `chromium` (headless browser, driven over the DevTools protocol on a pipe);
#     installed with apt-get when missing and running as root, otherwise a clear error.
#   - npm `@ohif/app@3.13.2`: only its built static viewer (dist/), fetched as the registry
#     tarball with `npm pack` (no dependency install) and unpacked under .cache/ohif/
#     (Debian `npm` is installed first when there is no npm).
# Usage: scripts/install_viewer.sh   (skips each part that is already present)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ohif_version="3.13.2"
cache_dir="$repo_root/.cache/ohif"
target="$cache_dir/app-$ohif_version"

if command -v chromium >/dev/null 2>&1; then
    echo "install_viewer: chromium present ($(command -v chromium))"
elif [ "$(id -u)" = "0" ]; then
    echo "install_viewer: installing Debian package chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
else
    echo "install_viewer: chromium is missing; install the Debian package 'chromium' (as root: apt-get install chromium)" >&2
    exit 1
fi

if [ -f "$target/dist/index.html" ]; then
    echo "install_viewer: OHIF $ohif_version present ($target/dist)"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        echo "install_viewer: installing Debian package npm (to fetch @ohif/app from the npm registry)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq npm; }
    else
        echo "install_viewer: npm is missing; install the Debian package npm to fetch @ohif/app" >&2
        exit 1
    fi
fi
mkdir -p "$cache_dir"
work="$(mktemp -d "$cache_dir/.download.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "install_viewer: fetching @ohif/app@$ohif_version (about 50 MB)"
tarball="$(cd "$work" && npm pack --silent "@ohif/app@$ohif_version" | tail -n 1)"
mkdir -p "$work/unpacked"
tar -xzf "$work/$tarball" -C "$work/unpacked"
if [ ! -f "$work/unpacked/package/dist/index.html" ]; then
    echo "install_viewer: @ohif/app@$ohif_version has no dist/index.html; cannot serve the viewer" >&2
    exit 1
fi
rm -rf "$target"
mv "$work/unpacked/package" "$target"
echo "install_viewer: OHIF $ohif_version installed at $target/dist"
