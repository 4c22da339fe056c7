#!/usr/bin/env bash
# Installs the outside peers the interop tests use, when this runs as root with apt (CI does):
# DPDK 22.11's tools from Debian (`dpdk-dev`: dpdk-telemetry.py, dpdk-testpmd). Without root or
# apt it installs nothing; the tests that need a peer then skip with one line naming it.
set -uo pipefail
want=()
command -v dpdk-telemetry.py >/dev/null 2>&1 || want+=(dpdk-dev)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ci/peers.sh: not root with apt-get: not installing ${want[*]} (their interop tests skip)"
  exit 0
fi
echo "== installing peers: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${want[@]}" >/tmp/hotplug-lab-peers.log 2>&1; then
  apt-get update -qq >>/tmp/hotplug-lab-peers.log 2>&1
  apt-get install -y -qq --no-install-recommends "${want[@]}" >>/tmp/hotplug-lab-peers.log 2>&1 \
    || echo "ci/peers.sh: could not install ${want[*]} (see /tmp/hotplug-lab-peers.log); their tests skip"
fi
exit 0
