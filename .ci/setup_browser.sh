#!/usr/bin/env bash
# Install what the report's browser test needs: Debian's Chromium and Playwright's Python package
# (driven against /usr/bin/chromium; never `playwright install`, which downloads its own browser).
# Idempotent: installs only what is missing and says what it did.
# Usage: PYTHON=/path/to/venv/bin/python bash .ci/setup_browser.sh   (default: python on PATH)
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if command -v chromium >/dev/null 2>&1; then
    echo "setup_browser: chromium already installed: $(chromium --version 2>/dev/null || echo '?')"
else
    echo "setup_browser: installing Debian chromium (apt-get update first)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
    echo "setup_browser: installed $(chromium --version 2>/dev/null || echo chromium)"
fi

if "$PYTHON" -c "import playwright" >/dev/null 2>&1; then
    echo "setup_browser: playwright already installed for $PYTHON: $("$PYTHON" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p')"
else
    echo "setup_browser: pip installing playwright into $PYTHON (the Python driver only; no browser download)"
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q "playwright>=1.45,<2"
    else  # a venv made by uv has no pip
        uv pip install -q --python "$PYTHON" "playwright>=1.45,<2"
    fi
    echo "setup_browser: installed playwright $("$PYTHON" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p')"
fi
