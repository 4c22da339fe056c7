#!/usr/bin/env bash
# A network namespace with a veth pair, for running something against a kernel interface that
# has a live peer, then removing both whatever happens (trap on EXIT, INT, TERM).
#
#   ci/netns.sh -- COMMAND [ARGS...]
#
# Creates namespace `labns<pid>` and a veth pair: `lvh<pid>` stays in this namespace (up, IPv6
# off so the kernel sends nothing on it by itself), `lvn<pid>` goes into the new namespace (up,
# IPv6 off). COMMAND runs here with:
#   LAB_NETNS=labns<pid>   LAB_VETH_HOST=lvh<pid>   LAB_VETH_NS=lvn<pid>
# so it can attach e.g. `net_af_packet0,iface=$LAB_VETH_HOST` and send or capture on the far
# end with `ip netns exec $LAB_NETNS ...`. The exit status is COMMAND's.
#
# The test suite does NOT need this script: every test that needs a kernel interface creates its
# own veth pair or TAP (unique names from the test process id and a counter, at most 15 bytes)
# and removes it on drop, so tests run in parallel and `.ci/run` (`cargo test` as root) works
# with nothing set up beforehand. Without CAP_NET_ADMIN those tests print one "skipping" line.
set -euo pipefail

if [[ "${1:-}" != "--" || $# -lt 2 ]]; then
    echo "usage: $0 -- COMMAND [ARGS...]" >&2
    exit 2
fi
shift
if ! ip link add lvprobe$$ type veth peer name lvprobf$$ 2>/dev/null; then
    echo "$0: cannot create interfaces (needs root / CAP_NET_ADMIN)" >&2
    exit 1
fi
ip link del lvprobe$$

NS="labns$$"
HOST="lvh$$"
PEER="lvn$$"

cleanup() {
    ip link del "$HOST" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS"
ip link add "$HOST" type veth peer name "$PEER"
ip link set "$PEER" netns "$NS"
sysctl -qw "net.ipv6.conf.$HOST.disable_ipv6=1" || true
ip netns exec "$NS" sysctl -qw "net.ipv6.conf.$PEER.disable_ipv6=1" || true
ip link set "$HOST" up
ip netns exec "$NS" ip link set "$PEER" up
ip netns exec "$NS" ip link set lo up

export LAB_NETNS="$NS" LAB_VETH_HOST="$HOST" LAB_VETH_NS="$PEER"
set +e
"$@"
status=$?
exit "$status"
