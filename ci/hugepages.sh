#!/usr/bin/env bash
# The multi-process tests once more on a DPDK-style machine: 256 x 2 MB hugepages reserved and
# hugetlbfs mounted, so the runtime puts its memory file there. Only as root; everything it
# changes (the reservation, the mount) is put back on exit, also when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || [ ! -w /proc/sys/vm/nr_hugepages ]; then
    echo "== hugepages pass skipped: needs root and /proc/sys/vm/nr_hugepages"
    exit 0
fi
before=$(cat /proc/sys/vm/nr_hugepages)
mnt=$(mktemp -d /tmp/lab-huge.XXXXXX)
cleanup() {
    umount "$mnt" 2>/dev/null || true
    rmdir "$mnt" 2>/dev/null || true
    echo "$before" > /proc/sys/vm/nr_hugepages
}
trap cleanup EXIT
echo $((before + 256)) > /proc/sys/vm/nr_hugepages
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "${free:-0}" -lt 64 ] || ! mount -t hugetlbfs nodev "$mnt"; then
    echo "== hugepages pass skipped: could not reserve and mount 2 MB pages (free: ${free:-0})"
    exit 0
fi
echo "== cargo test (multi-process, hugetlbfs at $mnt, $free free 2 MB pages)"
cargo test --locked -p lab-core --test mp_runtime --test telemetry
cargo test --locked -p lab-harness --test hotplug_mp --test telemetry_ports --test vdev_hotplug
cargo test --locked -p lab-examples
left=$(ls -A "$mnt")
if [ -n "$left" ]; then
    echo "memory files left on hugetlbfs: $left"
    exit 1
fi
