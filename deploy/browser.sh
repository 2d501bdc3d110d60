#!/usr/bin/env bash
# Debian's chromium, for the status page test (tests/integration/test_status_page.py).
#
#   deploy/browser.sh     install chromium (and a font) with apt-get unless already there
#
# Idempotent: when /usr/bin/chromium and a font are present it only prints the
# version and exits. Needs root (or sudo) and a reachable Debian mirror; the
# machine needs no other internet access. Exits non-zero with a message on failure.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
# Headless chromium draws text with whatever fontconfig finds; with no font at
# all every glyph is a box. DejaVu is small and Debian's default.
PACKAGES=(chromium fonts-dejavu-core)

die() { echo "browser.sh: $*" >&2; exit 1; }
say() { echo "browser.sh: $*"; }

have_font() { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null | head -n 1)" ]; }

if [ -x "$CHROMIUM" ] && have_font; then
  say "$("$CHROMIUM" --version 2>/dev/null || echo chromium) already installed at $CHROMIUM"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 \
  || die "$CHROMIUM is missing and there is no apt-get here; install Debian's chromium package by hand"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 \
    || die "$CHROMIUM is missing; installing it needs root: run 'apt-get install -y --no-install-recommends ${PACKAGES[*]}' as root"
  SUDO=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for a dpkg lock held by another apt run instead of failing at once.
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)

say "installing ${PACKAGES[*]} with apt-get (missing: $CHROMIUM or a font)"
say "+ apt-get update"
"${SUDO[@]}" apt-get "${APT_OPTS[@]}" update -q \
  || die "apt-get update failed (is a Debian mirror reachable?)"
say "+ apt-get install -y --no-install-recommends ${PACKAGES[*]}"
"${SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${PACKAGES[@]}" \
  || die "apt-get install ${PACKAGES[*]} failed"

[ -x "$CHROMIUM" ] || die "apt-get finished but $CHROMIUM is still missing"
version=$("$CHROMIUM" --version 2>/dev/null) || die "$CHROMIUM is installed but does not run ('$CHROMIUM --version' failed)"
say "installed: $version"
