#!/usr/bin/env bash
# Runs the lab's scenarios on real NICs bound to vfio-pci instead of emulated ones.
#
#   ci/real-nic.sh 0000:03:00.0[,0000:03:00.1]      (or LAB_REAL_NICS=0000:03:00.0,0000:03:00.1)
#
# What the machine needs (once, as root):
#   1. the IOMMU on: intel_iommu=on (or amd_iommu=on) iommu=pt on the kernel command line,
#      or vfio's no-IOMMU mode: echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
#   2. the vfio-pci module:  modprobe vfio-pci
#   3. each function bound to vfio-pci, either persistently with driverctl:
#        driverctl set-override 0000:03:00.0 vfio-pci
#      or by hand:
#        echo 0000:03:00.0 > /sys/bus/pci/devices/0000:03:00.0/driver/unbind
#        echo vfio-pci > /sys/bus/pci/devices/0000:03:00.0/driver_override
#        echo 0000:03:00.0 > /sys/bus/pci/drivers/vfio-pci/bind
#   (undo: driverctl unset-override 0000:03:00.0, or clear driver_override and bind ixgbe again)
#
# Any function a lab driver knows works: 82599 (net_ixgbe), X710 (net_i40e), virtio-net (net_virtio:
# 1af4:1041, or 1af4:1000 in modern mode; the device must offer VIRTIO_F_ACCESS_PLATFORM, i.e. sit
# behind an IOMMU; on QEMU iommu_platform=on), as on a cloud VM with a vIOMMU.
# The scenario's emulated functions (0000:00:05.0, 0000:00:06.0, ...) are mapped onto the given
# ones in order. Scenarios that need the emulator (link flap, surprise unplug) or more functions
# than given are skipped by the runner; 16-two-nics-cabled needs the two ports cabled together.
# Exit status: the runner's (0 all passed, 1 a failure), 2 when the setup is incomplete (the
# reason is printed), 77 when there is no /dev/vfio at all (skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /dev/vfio ]; then
    echo "real-nic: skipped: /dev/vfio does not exist (modprobe vfio-pci and bind a NIC, see the top of ci/real-nic.sh)"
    exit 77
fi

BDFS="${1:-${LAB_REAL_NICS:-}}"
if [ -z "$BDFS" ]; then
    bound=$(ls /sys/bus/pci/drivers/vfio-pci 2>/dev/null | grep -E '^[0-9a-f]{4}:' | paste -sd, - || true)
    if [ -z "$bound" ]; then
        echo "real-nic: no PCI function is bound to vfio-pci: bind one (see the top of ci/real-nic.sh) and pass its address"
        exit 2
    fi
    echo "real-nic: no functions given; functions bound to vfio-pci here: $bound"
    echo "real-nic: pass them explicitly (ci/real-nic.sh $bound) so the lab never takes a NIC by surprise"
    exit 2
fi

missing=0
IFS=, read -ra LIST <<< "$BDFS"
for bdf in "${LIST[@]}"; do
    dev="/sys/bus/pci/devices/$bdf"
    if [ ! -e "$dev" ]; then
        echo "real-nic: $bdf: no such PCI function (lspci -D lists them; the address needs its domain, 0000:)"
        missing=1
        continue
    fi
    driver=$(basename "$(readlink "$dev/driver" 2>/dev/null || echo none)")
    if [ "$driver" != vfio-pci ]; then
        echo "real-nic: $bdf is bound to $driver, not vfio-pci: driverctl set-override $bdf vfio-pci"
        missing=1
        continue
    fi
    group=$(basename "$(readlink "$dev/iommu_group" 2>/dev/null || echo none)")
    if [ ! -e "/dev/vfio/$group" ] && [ ! -e "/dev/vfio/noiommu-$group" ]; then
        echo "real-nic: $bdf: /dev/vfio/$group is missing (IOMMU group $group): is the IOMMU on?"
        missing=1
    fi
    id="$(cat "$dev/vendor"):$(cat "$dev/device")"
    case "$id" in
        0x8086:0x10fb) ;;
        *) echo "real-nic: $bdf is $id: the lab's drivers know the 82599 (0x8086:0x10fb); its scenarios may fail here" ;;
    esac
done
[ "$missing" = 0 ] || exit 2

cargo build -p lab-harness --bins --quiet
cargo build -p lab-emu --bin lab-nic --quiet
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
mkdir -p "$TARGET_DIR"
# The scenarios that use PCI functions; the runner skips those that cannot run on real hardware.
mapfile -t SCENARIOS < <(grep -l '^\[\[lab.nic\]\]' harness/scenarios/*.toml)
exec "$TARGET_DIR/debug/lab" run -j 1 --real "$BDFS" \
    --junit "$TARGET_DIR/real-nic-junit.xml" --json "$TARGET_DIR/real-nic.json" "${SCENARIOS[@]}"
