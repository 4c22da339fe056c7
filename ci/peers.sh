#!/usr/bin/env bash
# Installs the outside peers the interop tests use, when this runs as root with apt (CI does):
# DPDK 22.11's tools from Debian (`dpdk-dev`: dpdk-telemetry.py, dpdk-testpmd), and the sources
# of its examples (`dpdk-doc`), from which DPDK's own hotplug_mp is built into
# target/dpdk/hotplug_mp for the VM tier's side-by-side check. Without root or apt it installs
# nothing; the tests that need a peer then skip with one line naming it.
set -uo pipefail
cd "$(dirname "$0")/.."
build_hotplug_mp() {
  local src=/usr/share/dpdk/examples/multi_process/hotplug_mp
  [ -x target/dpdk/hotplug_mp/build/hotplug_mp ] && return 0
  [ -d "$src" ] && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libdpdk || return 0
  rm -rf target/dpdk/hotplug_mp && mkdir -p target/dpdk && cp -r "$src" target/dpdk/hotplug_mp \
    && make -C target/dpdk/hotplug_mp >/tmp/hotplug-lab-dpdk-build.log 2>&1 \
    || echo "ci/peers.sh: could not build DPDK's hotplug_mp (see /tmp/hotplug-lab-dpdk-build.log); its check skips"
}
want=()
command -v dpdk-telemetry.py >/dev/null 2>&1 || want+=(dpdk-dev)
[ -d /usr/share/dpdk/examples/multi_process/hotplug_mp ] || want+=(dpdk-doc)
command -v pkg-config >/dev/null 2>&1 || want+=(pkg-config)
if [ ${#want[@]} -eq 0 ]; then build_hotplug_mp; exit 0; fi
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
build_hotplug_mp
exit 0
