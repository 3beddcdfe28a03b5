#!/bin/bash
# Is deleting a host veth slower in a node namespace that has an nftables
# table with a conntrack rule, or a route-netlink listener for all
# namespaces (as the daemon's node has)?
#
# Builds a node namespace with N containers (processes in their own
# network namespace, started from inside the node), one veth each (host
# side in the node, `eth0` in the container), then deletes host sides
# one at a time with `ip link del` (so each time includes starting `ip`),
# in rounds of three conditions: plain; with an `inet` table whose forward
# chain has `ct state established,related accept`; with `ip monitor
# all-nsid` listening. Prints the median per condition and round.
#
# Run as root: `sudo N=600 benches/veth-delete.sh` (N ≥ 3 × ROUNDS ×
# SAMPLES). Only a namespace named cmbench-vdel-<pid> and the processes
# it starts are touched; all are removed on exit.
set -euo pipefail

N=${N:-600}
ROUNDS=${ROUNDS:-3}
SAMPLES=${SAMPLES:-30}
node="cmbench-vdel-$$"
work=$(mktemp -d)
containers=()
monitor=""

cleanup() {
    [ -n "$monitor" ] && kill "$monitor" 2>/dev/null || true
    [ "${#containers[@]}" -gt 0 ] && kill "${containers[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$node" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$node"
ip -n "$node" link set lo up
for _ in $(seq "$N"); do
    ip netns exec "$node" unshare --net sleep 900 &
    containers+=($!)
done
sleep 2

i=0
for pid in "${containers[@]}"; do
    i=$((i + 1))
    # `unshare` forks nothing: the pid is the container's process.
    echo "link add h$i type veth peer name eth0 netns $pid"
    echo "link set h$i up"
done >"$work/links"
ip -n "$node" -batch "$work/links"
sleep 3

deleted=0
measure() { # label
    local times=() start end
    for _ in $(seq "$SAMPLES"); do
        deleted=$((deleted + 1))
        start=$(date +%s%N)
        ip -n "$node" link del "h$deleted"
        end=$(date +%s%N)
        times+=($(((end - start) / 1000)))
        sleep 0.05
    done
    printf '%s\n' "${times[@]}" | sort -n |
        awk -v label="$1" -v round="$2" '{a[NR] = $1} END {printf "| %s | %s | %.1f ms |\n", label, round, a[int((NR + 1) / 2)] / 1000}'
}

echo "| condition | round | veth delete median (with \`ip\` start) |"
echo "|---|---|---|"
for round in $(seq "$ROUNDS"); do
    measure plain "$round"
    ip netns exec "$node" nft -f - <<'NFT'
table inet cmbench {
    chain forward_filter {
        type filter hook forward priority 0; policy accept;
        ct state established,related accept
    }
}
NFT
    measure "nft table with conntrack" "$round"
    ip netns exec "$node" nft delete table inet cmbench
    ip -n "$node" monitor all-nsid >/dev/null &
    monitor=$!
    sleep 0.5
    measure "all-nsid listener" "$round"
    kill "$monitor"
    wait "$monitor" 2>/dev/null || true
    monitor=""
done
