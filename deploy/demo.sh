#!/usr/bin/env bash
# calico-mesos demo: one Mesos agent on the embedded SQLite store.
#
# The agent ("node") is a network namespace that looks like a real one: an
# address on eth0 and default routes via a gateway namespace (forwarding off
# there, so nothing goes further). Six containers are started in it as Mesos
# would, get their addresses and interfaces through the real net-modules
# protocol (one JSON request on the binary's stdin), are pinged from each
# other, and the node's daemon repairs what is broken behind its back.
#
# Safety (shared/TESTING.md): nothing is done in the root network namespace;
# addresses only from 198.18.0.0/16, 2001:db8:1::/64 (containers) and
# 198.19.0.0/24, 2001:db8:f::/64 (node fabric); every namespace carries the
# prefix cmdemo-<pid>-; every wait is bounded; the namespaces, processes and
# the temporary directory are removed on success, on failure and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---------------------------------------------------------------- the scene
# Containers: name, then netgroups (space separated, empty for none).
names=(task-1 task-2 task-3 task-4 task-5 task-6)
groups=("web" "web" "db" "web db" "public" "")

# Netgroup isolation is enforced (DESIGN.md, "Policy"): a container lets in
# the members of its netgroups (any container if it is `public`) and the
# node; a container in any netgroup may send anywhere, one in none only to
# its node. Set to 0 (and run the daemon with CALICO_MESOS_POLICY=disabled)
# to see every pair connect.
POLICY_ENFORCED=1

prefix="cmdemo-$$"
node="$prefix-node"
gw="$prefix-gw"
hostname=demo-agent

# ------------------------------------------------------------------ helpers
if [[ -t 1 ]]; then bold=$'\033[1m' red=$'\033[31m' green=$'\033[32m' off=$'\033[0m'
else bold='' red='' green='' off=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
note() { printf '   %s\n' "$*"; }
die() { printf '%sdemo: %s%s\n' "$red" "$*" "$off" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
# alive PID: a child of this script (so never someone else's process that
# got the pid later) that is not a zombie.
alive() {
  local line f
  read -r line 2>/dev/null </proc/"$1"/stat || return 1
  read -ra f <<<"${line##*) }"
  [[ ${f[0]} != Z && ${f[1]} == "$$" ]]
}
# gone TENTHS PID...: polls (every 20 ms, up to TENTHS tenths of a second)
# until none of the PIDs is alive. The shell's `wait` is never used on them:
# a `wait` cut short by Ctrl-C can leave bash waiting forever afterwards.
gone() {
  local n=$(($1 * 5)) p live
  shift
  while ((n-- > 0)); do
    live=0
    for p in "$@"; do [[ -n $p ]] && alive "$p" && live=1 && break; done
    ((live)) || return 0
    sleep 0.02
  done
  return 1
}
innode() { ip netns exec "$node" "$@"; }
incontainer() { nsenter --net="/proc/$1/ns/net" "${@:2}"; }

# ------------------------------------------------------- teardown, always
work=""
daemon_pid=""
cpids=()
bg_jobs=()
created_ns=()
failures=0
netns_before=$(ip netns list 2>/dev/null | awk '{print $1}' | sort || true)

teardown() {
  local rc=$? pid i left=()
  trap '' INT TERM
  trap - EXIT
  set +e
  if [[ -n $work || ${#created_ns[@]} -gt 0 ]]; then say "Teardown"; fi
  if ((rc != 0)) && [[ -n $work && -s $work/daemon.log ]]; then
    note "(failed or interrupted: last lines of the daemon log)"
    tail -n 15 "$work/daemon.log" | cut -c1-200 | sed "s/^/   | /"
  fi
  if [[ -n $daemon_pid ]] && alive "$daemon_pid"; then
    kill -TERM "$daemon_pid" 2>/dev/null
    if gone 50 "$daemon_pid"; then
      note "daemon stopped (SIGTERM)"
    else
      note "daemon did not stop within 5 s of SIGTERM: SIGKILL"
      alive "$daemon_pid" && kill -KILL "$daemon_pid" 2>/dev/null
      gone 10 "$daemon_pid"
    fi
  elif [[ -n $daemon_pid ]]; then
    note "daemon had already stopped"
  fi
  # Pings still running (an interrupted matrix) end within 1 s.
  if ((${#bg_jobs[@]})) && ! gone 20 "${bg_jobs[@]}"; then
    for pid in "${bg_jobs[@]}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  fi
  for pid in "${cpids[@]}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  gone 20 "${cpids[@]}"
  ((${#cpids[@]})) && note "containers killed: ${cpids[*]}"
  # Anything else still inside our namespaces is ours too (e.g. a plugin call
  # cut short): kill it before the namespaces go.
  for i in "${created_ns[@]}"; do
    for pid in $(ip netns pids "$i" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  for ((i = ${#created_ns[@]} - 1; i >= 0; i--)); do
    ip netns del "${created_ns[i]}" 2>/dev/null && note "namespace ${created_ns[i]} deleted"
  done
  [[ -n $work ]] && rm -rf "$work" && note "temporary directory $work removed"

  # Check that nothing of ours is left.
  for pid in "$daemon_pid" "${cpids[@]}"; do
    [[ -n $pid ]] && alive "$pid" && left+=("process $pid")
  done
  for i in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ $i == "$prefix"-* ]] && left+=("namespace $i")
  done
  [[ -n $work && -e $work ]] && left+=("directory $work")
  if ((${#left[@]})); then
    printf '%sleft behind: %s%s\n' "$red" "${left[*]}" "$off" >&2
    rc=1
  elif [[ -n $work || ${#created_ns[@]} -gt 0 ]]; then
    note "left behind: nothing (no namespace $prefix-*, no process, no directory)"
    if [[ $(ip netns list 2>/dev/null | awk '{print $1}' | sort) == "$netns_before" ]]; then
      note "ip netns list: exactly as before the demo"
    else
      note "ip netns list: changed by someone else meanwhile (none of it is the demo's)"
    fi
  fi
  if [[ -n $work || ${#created_ns[@]} -gt 0 ]]; then
    if ((rc == 130 || rc == 143)); then printf 'demo: interrupted\n' >&2
    elif ((rc != 0)); then printf '%sdemo: FAILED (exit %d)%s\n' "$red" "$rc" "$off" >&2; fi
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------- prerequisites
[[ $EUID -eq 0 ]] || die "needs root (it creates network namespaces): sudo ./deploy/demo.sh"
missing=()
for t in ip unshare nsenter ping sysctl jq; do command -v "$t" >/dev/null || missing+=("$t"); done
((${#missing[@]} == 0)) || die "missing ${missing[*]}: install the demo's packages with: sudo ./scripts/install-deps.sh"
command -v cargo >/dev/null ||
  die "cargo not found (sudo resets PATH; try: sudo env \"PATH=\$PATH\" ./deploy/demo.sh)"

say "Building calico-mesos (cargo build --release)"
cargo build --release --locked --quiet
bin=$PWD/target/release/calico-mesos
start_us=$(now_us)

# ----------------------------------------------------------------- the node
say "A node that looks like a Mesos agent: namespace $node"
work=$(mktemp -d "/tmp/$prefix.XXXXXX")
# Registered for teardown first, so an interrupt right after the add is
# covered too (the names are ours alone: they carry this run's pid).
created_ns+=("$gw"); ip netns add "$gw"
created_ns+=("$node"); ip netns add "$node"
# The veth is created inside the node and its peer put straight into the
# gateway: the root namespace never sees either end.
ip -n "$node" link add eth0 type veth peer name up0 netns "$gw"
ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
ip -n "$gw" addr add 198.19.0.254/24 dev up0
ip -n "$gw" addr add 2001:db8:f::fe/64 dev up0 nodad
ip -n "$node" addr add 198.19.0.1/24 dev eth0
ip -n "$node" addr add 2001:db8:f::1/64 dev eth0 nodad
for ns in "$gw" "$node"; do ip -n "$ns" link set lo up; done
ip -n "$gw" link set up0 up
ip -n "$node" link set eth0 up
ip -n "$node" route add default via 198.19.0.254 dev eth0
ip -n "$node" -6 route add default via 2001:db8:f::fe dev eth0
note "eth0 198.19.0.1/24, 2001:db8:f::1/64; default via gateway $gw (198.19.0.254, 2001:db8:f::fe; forwarding off)"

: >"$work/config.yaml"
export CALICO_MESOS_CONFIG="$work/config.yaml"
export CALICO_MESOS_DATASTORE="sqlite://$work/store.db"
export CALICO_MESOS_NODENAME=$hostname
export CALICO_MESOS_RUN_DIR="$work/run"
export CALICO_MESOS_LOG_LEVEL=info
export CALICO_MESOS_ORPHAN_GRACE=2s
note "store, run dir and logs in $work"

say "Pools (test ranges only)"
innode "$bin" pool add 198.18.0.0/16
innode "$bin" pool add 2001:db8:1::/64 --block-size 122

say "The node's reconcile loop: calico-mesos daemon"
# Not through a shell function: $! must be the daemon itself (ip execs it).
ip netns exec "$node" "$bin" daemon </dev/null >"$work/daemon.log" 2>&1 &
daemon_pid=$!
disown "$daemon_pid" # no "Terminated" notice from bash at the end
for ((i = 0; i < 250; i++)); do
  [[ -S $work/run/daemon.sock ]] && break
  alive "$daemon_pid" || die "the daemon exited: $(tail -n 5 "$work/daemon.log")"
  sleep 0.02
done
[[ -S $work/run/daemon.sock ]] || die "the daemon does not listen on $work/run/daemon.sock after 5 s"
note "daemon pid $daemon_pid listens on $work/run/daemon.sock (log: $work/daemon.log)"

# ----------------------------------------------------- net-modules requests
# plugin REQUEST: one net-modules call, as the agent makes it. Prints request
# and answer; sets $answer; fails the demo on an error answer.
plugin() {
  printf '   → %s\n' "$1"
  answer=$(printf '%s\n' "$1" | innode "$bin" 2>>"$work/plugin.log") || true
  printf '   ← %s\n' "$answer"
  jq -e '.error == null' >/dev/null 2>&1 <<<"$answer" ||
    die "net-modules call failed (plugin log: $(tail -n 3 "$work/plugin.log"))"
}

root_ns=$(readlink /proc/self/ns/net)
node_ns=$(innode readlink /proc/self/ns/net)
cids=() v4=() v6=()
say "Mesos launches ${#names[@]} containers: allocate, then isolate"
for i in "${!names[@]}"; do
  # A container: a process in a fresh network namespace, started inside the
  # node. Its pid is what isolate receives ($! is it: ip execs unshare,
  # which execs sleep).
  ip netns exec "$node" unshare --net sleep infinity </dev/null >/dev/null 2>&1 &
  pid=$!
  cpids+=("$pid")
  disown "$pid" # no "Killed" notice from bash at the end
  # Wait (bounded) until it is `sleep` in a namespace of its own: before
  # that it may still be in the node's or the root's namespace.
  for ((t = 0; t < 250; t++)); do
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sleep ]]; then
      ns=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || ns=""
      [[ -n $ns && $ns != "$root_ns" && $ns != "$node_ns" ]] && break
    fi
    sleep 0.02
  done
  ((t < 250)) || die "container ${names[i]} (pid $pid) did not get its own namespace within 5 s"
  cids+=("$(cat /proc/sys/kernel/random/uuid)")
  ng=$(jq -cn --arg g "${groups[i]}" '$g | split(" ") | map(select(. != ""))')
  printf '\n   %s%s%s (pid %s, netgroups %s)\n' "$bold" "${names[i]}" "$off" "$pid" "$ng"
  plugin "$(jq -cn --arg h "$hostname" --arg uid "${names[i]}" --argjson ng "$ng" \
    '{command: "allocate", args: {hostname: $h, uid: $uid, num_ipv4: 1, num_ipv6: 1, netgroups: $ng}}')"
  v4+=("$(jq -r '.ipv4[0]' <<<"$answer")")
  v6+=("$(jq -r '.ipv6[0]' <<<"$answer")")
  plugin "$(jq -cn --arg h "$hostname" --arg cid "${cids[i]}" --argjson pid "$pid" \
    --arg a4 "${v4[i]}" --arg a6 "${v6[i]}" --argjson ng "$ng" \
    '{command: "isolate", args: {hostname: $h, container_id: $cid, pid: $pid,
      ipv4_addrs: [$a4], ipv6_addrs: [$a6], netgroups: $ng}}')"
done

say "calico-mesos status"
innode "$bin" status
say "calico-mesos node list (the daemon registered the node and keeps its lease)"
innode "$bin" node list
say "What the kernel holds"
note "node routes of ours (protocol 81):"
ip -n "$node" route show proto 81 | sed 's/^/     /'
ip -n "$node" -6 route show proto 81 | sed 's/^/     /'
note "inside ${names[0]}:"
incontainer "${cpids[0]}" ip -br addr show dev eth0 | sed 's/^/     /'
incontainer "${cpids[0]}" ip route | sed 's/^/     /'
incontainer "${cpids[0]}" ip -6 route | sed 's/^/     /'

say "Profiles (calico-mesos profile list; profile show web)"
innode "$bin" profile list
innode "$bin" profile show web
note "our nftables table: $(ip netns exec "$node" nft list table inet calico-mesos | grep -c 'chain ') chains"

# ------------------------------------------------------ reachability matrix
shares_netgroup() {
  local a b ga gb
  read -ra ga <<<"${groups[$1]}"
  read -ra gb <<<"${groups[$2]}"
  for a in "${ga[@]}"; do for b in "${gb[@]}"; do [[ $a == "$b" ]] && return 0; done; done
  return 1
}
# expected SRC DST: should SRC (a container index, or "node") reach DST?
# DST's profiles must let SRC in, and SRC's must let it out.
expected() {
  ((POLICY_ENFORCED)) || return 0
  [[ $1 == node ]] && return 0
  [[ -n ${groups[$1]} ]] || return 1 # no netgroup: out to its node only
  [[ " ${groups[$2]} " == *" public "* ]] && return 0
  shares_netgroup "$1" "$2"
}
# matrix FAMILY (4 or 6): every ordered pair, pinged in parallel (each ping
# bounded by -W1; a result missing after 3 s counts as blocked), then
# printed against the expectation.
matrix() {
  local fam=$1 dir="$work/matrix$1" s d addr from jobs=() label w=10 lw=17
  local -n addrs="v$fam"
  mkdir -p "$dir"
  for s in node "${!names[@]}"; do
    for d in "${!names[@]}"; do
      [[ $s == "$d" ]] && continue
      addr=${addrs[d]}
      if [[ $s == node ]]; then from=(innode); else from=(incontainer "${cpids[s]}"); fi
      (
        if "${from[@]}" ping -c1 -W1 "$addr" >/dev/null 2>&1; then echo y; else echo n; fi >"$dir/$s-$d"
      ) &
      jobs+=("$!")
      disown "$!"
    done
  done
  bg_jobs=("${jobs[@]}")
  gone 30 "${jobs[@]}" || true
  bg_jobs=()
  printf '   %-*s' "$lw" "IPv$fam from\\to"
  for d in "${!names[@]}"; do printf '%-*s' "$w" "${names[d]}"; done
  printf '\n'
  for s in node "${!names[@]}"; do
    if [[ $s == node ]]; then label=node; else label="${names[s]} [${groups[s]// /,}]"; fi
    printf '   %-*s' "$lw" "$label"
    for d in "${!names[@]}"; do
      if [[ $s == "$d" ]]; then printf '%-*s' "$w" "-"; continue; fi
      local got want cell
      got=$(cat "$dir/$s-$d" 2>/dev/null || echo n)
      if expected "$s" "$d"; then want=y; else want=n; fi
      if [[ $got == y ]]; then cell=reaches; else cell=blocked; fi
      if [[ $got == "$want" ]]; then
        printf '%s%-*s%s' "$green" "$w" "$cell" "$off"
      else
        printf '%s%-*s%s' "$red" "$w" "$cell!" "$off"
        failures=$((failures + 1))
      fi
    done
    printf '\n'
  done
}

say "Reachability: ping -c1 -W1 from every container (and the node) to every other"
if ((POLICY_ENFORCED)); then
  note "netgroup isolation: enforced (members of a shared netgroup, anyone to 'public', the node to all)"
else
  note "netgroup isolation: disabled: every pair is expected to connect"
fi
matrix 4
printf '\n'
matrix 6
note "(a '!' marks a result that differs from the expectation)"

# -------------------------------------------------------------- drift repair
# wait_repaired DESCRIPTION CHECK...: polls CHECK every 20 ms for up to 5 s;
# prints how long it took.
wait_repaired() {
  local what=$1 t0 ms
  shift
  t0=$(now_us)
  while ! "$@"; do
    ms=$((($(now_us) - t0) / 1000))
    if ((ms > 5000)); then
      printf '   %snot repaired within 5 s: %s%s\n' "$red" "$what" "$off"
      failures=$((failures + 1))
      return 0
    fi
    sleep 0.02
  done
  printf '   %srepaired in %d ms%s: %s\n' "$green" $((($(now_us) - t0) / 1000)) "$off" "$what"
}
# Both checks are bounded: one link lookup, one ping with a short timeout.
link_back_and_ping() { # IFACE SRC_INDEX ADDR
  ip -n "$node" link show dev "$1" >/dev/null 2>&1 &&
    incontainer "${cpids[$2]}" ping -c1 -W0.25 "$3" >/dev/null 2>&1
}
addr_back_and_ping() { # DST_INDEX ADDR SRC_INDEX
  [[ -n $(incontainer "${cpids[$1]}" ip -o addr show to "$2" 2>/dev/null) ]] &&
    incontainer "${cpids[$3]}" ping -c1 -W0.25 "$2" >/dev/null 2>&1
}

victim=2
say "Drift: delete ${names[victim]}'s host veth behind the daemon's back"
iface=$(innode "$bin" status -o json | jq -r --arg c "${cids[victim]}" \
  '.endpoints[] | select(.container_id == $c) | .interface')
[[ -n $iface && $iface != null ]] || die "no interface for ${names[victim]} in status -o json"
old=$(ip -n "$node" -o link show dev "$iface" | cut -d: -f1)
note "ip -n $node link del $iface   (ifindex $old; its peer, the container's eth0, goes with it)"
ip -n "$node" link del "$iface"
wait_repaired "$iface recreated, ${names[3]} → ${names[victim]} ${v4[victim]} answers" \
  link_back_and_ping "$iface" 3 "${v4[victim]}"
note "$iface is now ifindex $(ip -n "$node" -o link show dev "$iface" | cut -d: -f1)"

victim=3
say "Drift: delete an address inside ${names[victim]}"
line=$(incontainer "${cpids[victim]}" ip -o -4 addr show to "${v4[victim]}")
read -r _ dev _ cidr _ <<<"$line"
note "inside ${names[victim]}: ip addr del $cidr dev $dev"
incontainer "${cpids[victim]}" ip addr del "$cidr" dev "$dev"
wait_repaired "$cidr back on ${names[victim]}'s $dev, ${names[1]} → ${names[victim]} answers" \
  addr_back_and_ping "$victim" "${v4[victim]}" 1

say "Drift: delete our nftables table behind the daemon's back"
note "ip netns exec $node nft delete table inet calico-mesos"
ip netns exec "$node" nft delete table inet calico-mesos
table_back() { ip netns exec "$node" nft list chain inet calico-mesos forward >/dev/null 2>&1; }
wait_repaired "our table restored" table_back
if incontainer "${cpids[0]}" ping -c1 -W1 "${v4[2]}" >/dev/null 2>&1; then
  printf '   %s%s [web] → %s [db] connects: policy not restored%s\n' "$red" "${names[0]}" "${names[2]}" "$off"
  failures=$((failures + 1))
else
  note "${names[0]} [web] → ${names[2]} [db] blocked again"
fi

# ---------------------------------------------------------- tasks end
say "The tasks end: release, then cleanup (as net-modules calls them)"
for i in "${!names[@]}"; do
  printf '\n   %s%s%s\n' "$bold" "${names[i]}" "$off"
  plugin "$(jq -cn --arg a4 "${v4[i]}" --arg a6 "${v6[i]}" '{command: "release", args: {ips: [$a4, $a6]}}')"
  plugin "$(jq -cn --arg h "$hostname" --arg cid "${cids[i]}" \
    '{command: "cleanup", args: {hostname: $h, container_id: $cid}}')"
done

say "calico-mesos ipam show"
innode "$bin" ipam show
used=$(innode "$bin" ipam show -o json | jq '[.pools[].used] | add')
if ((used == 0)); then note "addresses in use: 0"
else printf '   %saddresses still in use: %s%s\n' "$red" "$used" "$off"; failures=$((failures + 1)); fi
ours=$(ip -n "$node" -o link show | grep -c ': cali' || true)
endpoints=$(innode "$bin" status -o json | jq '.endpoints | length')
note "host veths left in the node: $ours; endpoints left: $endpoints"
((ours == 0 && endpoints == 0)) || failures=$((failures + 1))

elapsed_ms=$((($(now_us) - start_us) / 1000))
say "Done in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000))) s (after the build)"
((failures == 0)) || die "$failures check(s) differed from what was expected (marked above)"
