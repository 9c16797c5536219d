#!/usr/bin/env bash
# Installs Debian's Chromium (and its driver) for the browser tests (tests/e2e) when it is not
# there yet. Playwright drives this binary; `playwright install` would need to download one.
set -euo pipefail
command -v chromium || (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)
chromium --version 2>/dev/null || true
