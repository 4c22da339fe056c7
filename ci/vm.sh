#!/usr/bin/env bash
# Provides the VM tier's peers (vm/tests/vm.rs), when this runs as root with apt (CI does):
# QEMU (qemu-system-x86), a static busybox (busybox-static) and a Debian kernel. The kernel
# package (linux-image-amd64's image) is downloaded and unpacked into target/vm/kernel, not
# installed: nothing runs initramfs-tools or touches /boot. Without root or apt it does nothing
# and the VM test skips with one line naming what is missing. KVM is used when /dev/kvm can run
# a guest; the test falls back to software emulation (TCG) by itself.
set -uo pipefail
cd "$(dirname "$0")/.."
log=/tmp/hotplug-lab-vm.log
want=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || want+=(qemu-system-x86)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || want+=(busybox-static)
# depmod (kmod): the kernel package ships its modules without modules.dep (its postinst makes it).
depmod_bin() { command -v depmod || ls /usr/sbin/depmod /sbin/depmod 2>/dev/null | head -1; }
[ -n "$(depmod_bin)" ] || want+=(kmod)
# A kernel image with its module tree (what vm/src/kernel.rs looks for), here or installed.
have_kernel() {
  local root img
  for root in target/vm/kernel ""; do
    for img in "$root"/boot/vmlinuz-*; do
      [ -r "$img" ] && [ -f "$root/lib/modules/${img##*/vmlinuz-}/modules.dep" ] && return 0
    done
  done
  return 1
}
if [ ${#want[@]} -eq 0 ] && have_kernel; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ci/vm.sh: not root with apt-get: not installing ${want[*]:-} or a guest kernel (the VM test skips)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get "$@" >>"$log" 2>&1 || { apt-get update -qq >>"$log" 2>&1 && apt-get "$@" >>"$log" 2>&1; }; }
if [ ${#want[@]} -gt 0 ]; then
  echo "== installing VM peers: ${want[*]}"
  apt_get install -y -qq --no-install-recommends "${want[@]}" \
    || echo "ci/vm.sh: could not install ${want[*]} (see $log); the VM test skips"
fi
if ! have_kernel; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq >>"$log" 2>&1
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  echo "== unpacking guest kernel ${pkg:-?} into target/vm/kernel"
  mkdir -p target/vm/kernel
  if [ -n "$pkg" ] && (cd target/vm && apt_get download "$pkg") \
     && dpkg-deb -x target/vm/"$pkg"_*.deb target/vm/kernel; then
    rm -f target/vm/"$pkg"_*.deb
  else
    echo "ci/vm.sh: could not download linux-image-amd64 (see $log); the VM test skips"
  fi
fi
# The unpacked tree's modules.dep, which the package leaves to its postinst.
for dir in target/vm/kernel/lib/modules/*/; do
  [ -d "$dir" ] || continue
  ver=$(basename "$dir")
  [ -f "$dir/modules.dep" ] && continue
  if [ -n "$(depmod_bin)" ]; then
    "$(depmod_bin)" -b target/vm/kernel "$ver" >>"$log" 2>&1 \
      || echo "ci/vm.sh: depmod failed for $ver (see $log); the VM test skips"
  else
    echo "ci/vm.sh: no depmod (kmod) for the guest kernel's modules.dep; the VM test skips"
  fi
done
exit 0
