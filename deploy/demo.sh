#!/usr/bin/env bash
# calico-mesos demo on the embedded SQLite store: builds the binary, then
# plays a Mesos agent through the real net-modules protocol (JSON on stdin).
# Leaves nothing behind: the store lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
bin=$PWD/target/release/calico-mesos
work=$(mktemp -d /tmp/calico-mesos-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CALICO_MESOS_DATASTORE="sqlite://$work/store.db" CALICO_MESOS_NODENAME=demo-agent CALICO_MESOS_LOG_LEVEL=warn

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
call() { echo "→ $1"; echo "$1" | "$bin" || true; }

say "Pools (test ranges only: 198.18.0.0/16, 2001:db8:1::/64)"
"$bin" pool add 198.18.0.0/16
"$bin" pool add 2001:db8:1::/64 --block-size 122

say "Mesos asks for addresses for two tasks"
call '{"command":"allocate","args":{"hostname":"demo-agent","uid":"task-web","num_ipv4":1,"num_ipv6":1,"netgroups":["web"]}}'
call '{"command":"allocate","args":{"hostname":"demo-agent","uid":"task-db","num_ipv4":2,"num_ipv6":0,"labels":[{"key":"ipv4_addrs","value":"[\"198.18.7.7\"]"}]}}'

say "A task reserves an address that is already taken"
call '{"command":"reserve","args":{"hostname":"demo-agent","uid":"task-x","ipv4_addrs":["198.18.7.7"]}}'

say "Bad input gets a clear error and changes nothing"
call '{"command":"allocate","args":{"hostname":"demo-agent","uid":"u","num_ipv4":"two","num_ipv6":0}}'

say "What the store holds"
"$bin" ipam show

say "The tasks end: release by address (as net-modules does) and by uid"
call '{"command":"release","args":{"ips":["198.18.0.0"]}}'
call '{"command":"release","args":{"uid":"task-db"}}'
"$bin" ipam show
