#!/usr/bin/env bash
# Install what the browser test (tests/test_browser.py, marker `browser`) needs: Debian's chromium
# at /usr/bin/chromium (apt-get) and the Python Playwright driver (pip, into the venv). Idempotent:
# does nothing when both are present. Playwright's own browser download is never used.
#
# Usage: scripts/install_browser.sh [PYTHON]     (PYTHON defaults to .venv/bin/python)
# The apt step needs root (or password-less sudo). Where it cannot run, this prints why and exits 0:
# the browser test then skips and says so; set KAGGLE_UTILS_REQUIRE_BROWSER=1 to make the test
# fail instead of skipping (CI).
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"
CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null | head -n1))"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO="sudo -n"
        else
            echo "install_browser: $CHROMIUM missing and not root: run 'sudo apt-get install -y chromium'" \
                "(the browser test skips until then)" >&2
            SUDO="none"
        fi
    fi
    if [ "$SUDO" != "none" ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "install_browser: $CHROMIUM missing and no apt-get here: install Chromium at $CHROMIUM" \
                "(or point KAGGLE_UTILS_CHROMIUM at one); the browser test skips until then" >&2
        else
            echo "install_browser: installing Debian's chromium with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            $SUDO apt-get update -qq
            $SUDO apt-get install -y -qq chromium
        fi
    fi
fi

if "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install_browser: playwright present for $PYTHON"
else
    echo "install_browser: installing playwright into $PYTHON (the driver only; no browser download)"
    "$PYTHON" -m pip install -q "playwright>=1.45"
fi
