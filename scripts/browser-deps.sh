#!/usr/bin/env bash
# Installs what the browser test needs: Debian's Chromium, Node.js with npm, and the
# pinned playwright-core (which drives that Chromium; no browser download) and axe-core
# (the accessibility check the test injects into the page).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "install ${missing[*]} (apt-get) and re-run" >&2; exit 1; fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
