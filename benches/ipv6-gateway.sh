#!/bin/bash
# Does one shared IPv6 gateway address on every host veth make the node's
# IPv6 slower as it fills, compared with one distinct address per veth?
#
# For N = 100 and 1,000 host veths (both ends in one throwaway namespace,
# configured as calico-mesos configures a host side: fixed MAC, no
# kernel-made link-local, the gateway as a /128 noprefixroute nodad, a
# /128 route with our protocol), this times the last 100 endpoints' link
# creation, gateway address add and host route add, per endpoint, once
# with the shared gateway fe80::ecee:eeff:feee:eeee and once with a
# distinct one per veth, and once with none at all (`none`: the host side
# gets a permanent neighbour entry for the container's address instead,
# which is what it would need to reach the container without a
# link-local of its own). It also counts the per-device `ff00::/8`
# multicast routes in the local table: the kernel adds one for every
# IPv6-enabled link (here both ends of each pair, so 2 N; on a real node
# one per host side), all siblings of one FIB node.
#
# Run as root: `sudo benches/ipv6-gateway.sh`. Only a namespace named
# cmbench-ll-<pid>-* is touched, and it is deleted on exit.
set -euo pipefail

work=$(mktemp -d)
ns=""
cleanup() {
    [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

gateway() { # mode index
    if [ "$1" = shared ]; then
        echo fe80::ecee:eeff:feee:eeee
    else
        printf 'fe80::ecee:eeff:fe00:%04x\n' "$2"
    fi
}

links() { # from to
    for i in $(seq "$1" "$2"); do
        echo "link add h$i address ee:ee:ee:ee:ee:ee type veth peer name c$i"
        echo "link set h$i addrgenmode none"
        echo "link set c$i addrgenmode none"
        echo "link set h$i up"
        echo "link set c$i up"
    done
}

addresses() { # mode from to
    for i in $(seq "$2" "$3"); do
        if [ "$1" = none ]; then
            printf 'neighbour add 2001:db8:1::%04x lladdr 02:00:00:00:00:01 dev h%d nud permanent\n' "$i" "$i"
        else
            echo "address add $(gateway "$1" "$i")/128 dev h$i noprefixroute nodad"
        fi
    done
}

routes() { # from to
    for i in $(seq "$1" "$2"); do
        printf 'route add 2001:db8:1::%04x/128 dev h%d proto 81\n' "$i" "$i"
    done
}

# Per-endpoint microseconds of one batch of 100.
timed() { # batch-file
    local start end
    start=$(date +%s%N)
    ip -n "$ns" -batch "$1"
    end=$(date +%s%N)
    echo $(((end - start) / 100000))
}

run() { # mode n
    local mode=$1 n=$2 before=$(($2 - 100))
    ns="cmbench-ll-$$-$mode-$n"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    if [ "$before" -gt 0 ]; then
        links 1 "$before" >"$work/l1"
        addresses "$mode" 1 "$before" >"$work/a1"
        routes 1 "$before" >"$work/r1"
        for f in l1 a1 r1; do ip -n "$ns" -batch "$work/$f"; done
    fi
    links $((before + 1)) "$n" >"$work/l2"
    addresses "$mode" $((before + 1)) "$n" >"$work/a2"
    routes $((before + 1)) "$n" >"$work/r2"
    local l a r m
    l=$(timed "$work/l2")
    a=$(timed "$work/a2")
    r=$(timed "$work/r2")
    m=$(ip -n "$ns" -6 route show table local | grep -c '^multicast ff00::/8' || true)
    echo "| $mode | $n | $l | $a | $r | $m |"
    ip netns del "$ns"
    ns=""
    # The kernel dismantles the namespace's veths in the background.
    sleep 8
}

echo "| gateway | host veths | link create + up, µs | gateway address add (none: neighbour add), µs | host route add, µs | ff00::/8 routes |"
echo "|---|---|---|---|---|---|"
for n in 100 1000; do
    for mode in shared distinct none shared distinct none; do
        run "$mode" "$n"
    done
done
