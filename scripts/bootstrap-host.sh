#!/usr/bin/env bash
# Install the Debian packages ckms needs on the build/CI machine. Idempotent: only missing
# packages are installed, so a machine that already has them pays nothing.
set -euo pipefail
packages=(
  softhsm2 opensc openssl curl          # HSM emulation, pkcs11-tool, reference TLS/EST/CRL tools
  postgresql                            # the shared database backend (tests start their own cluster)
  debootstrap systemd-container nftables iproute2   # lab hosts (nspawn machines in netns)
  chromium                              # headless rendering test of the hardening report, the PDF form
  fonts-ipafont-gothic                  # Japanese glyphs in the PDF form (else empty boxes)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || apt-get update -qq   # one retry: a mirror hiccup should not fail CI
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
