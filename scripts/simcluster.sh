#!/usr/bin/env bash
# A simulated cluster on one Linux machine: every "node" is a network namespace (a veth pair into one
# bridge, its own IP) whose processes also get their own IPC and UTS namespaces (own hostname; no
# shared memory with other nodes, which MPICH would otherwise use), so MPI talks TCP between nodes.
# Needs root, iproute2 and util-linux (unshare).
#
#   scripts/simcluster.sh up NODES [RATE] [DELAY] [BURST]
#                                                   create NODES nodes; optional egress shaping per node:
#                                                   RATE for tc tbf (e.g. 1gbit; BURST, default 32kb), DELAY
#                                                   for tc netem (e.g. 1ms; said so when the kernel lacks it)
#   scripts/simcluster.sh mpirun [mpirun args...]   run mpirun across the nodes (MPICH's or Open MPI's,
#                                                   whichever is on PATH; fills in hosts and launcher)
#   scripts/simcluster.sh bytes                     bytes sent by each node so far (its veth's counters)
#   scripts/simcluster.sh down                      remove every namespace, link and rule it created
#
# Example:  sudo scripts/simcluster.sh up 4 1gbit
#           sudo scripts/simcluster.sh mpirun -n 4 qwen3-mpi generate -p "Hello" --profile
#           sudo scripts/simcluster.sh down
#
# SIMCLUSTER_NAME (default q3sim) names the bridge, namespaces and the state directory /tmp/<name>, so
# several clusters can coexist. Ranks are spread over the nodes round-robin by -hosts (node:slots).
set -euo pipefail

NAME=${SIMCLUSTER_NAME:-q3sim}
STATE=/tmp/$NAME
BRIDGE=${NAME}br
SUBNET=${SIMCLUSTER_SUBNET:-10.78.20}

die() { echo "simcluster: $*" >&2; exit 1; }

up() {
  local nodes=$1 rate=${2:-} delay=${3:-} burst=${4:-32kb}
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  [ -e "$STATE" ] && die "$STATE exists: '$0 down' first (SIMCLUSTER_NAME=$NAME)"
  mkdir -p "$STATE"
  echo "$nodes" > "$STATE/nodes"
  trap 'echo "simcluster: setup failed, cleaning up" >&2; down' ERR
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$nodes"); do
    local ns=${NAME}n$i inside=${NAME}v$i outside=${NAME}b$i
    ip netns add "$ns"
    ip link add "$inside" type veth peer name "$outside"
    ip link set "$inside" netns "$ns"
    ip link set "$outside" master "$BRIDGE"
    ip link set "$outside" up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev "$inside"
    ip -n "$ns" link set "$inside" up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "$SUBNET.254"
    if [ -n "$delay" ]; then
      if ! ip netns exec "$ns" tc qdisc add dev "$inside" root handle 1: netem delay "$delay" 2>"$STATE/tc.err"; then
        echo "simcluster: netem is not available in this kernel ($(cat "$STATE/tc.err")); no delay" >&2
        echo "netem-missing" > "$STATE/netem"
        delay=""
      fi
    fi
    if [ -n "$rate" ]; then
      if [ -n "$delay" ]; then parent="parent 1:1 handle 10:"; else parent="root handle 10:"; fi
      # shellcheck disable=SC2086
      ip netns exec "$ns" tc qdisc add dev "$inside" $parent tbf rate "$rate" burst "$burst" latency 100ms
    fi
  done
  trap - ERR
  cat > "$STATE/launch" <<EOF
#!/bin/sh
# hydra's ssh-style launcher: [options] HOST COMMAND... ; HOST $SUBNET.N runs in node N's namespaces
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
node=\${host##*.}
exec ip netns exec "${NAME}n\$node" unshare --uts --ipc sh -c 'hostname "\$0"; exec sh -c "\$1"' "node\$node" "\$*"
EOF
  chmod +x "$STATE/launch"
  echo "simcluster: $nodes nodes $SUBNET.1..$SUBNET.$nodes on bridge $BRIDGE${rate:+, rate $rate}${delay:+, delay $delay}"
}

mpirun_() {
  [ -f "$STATE/nodes" ] || die "no cluster: '$0 up NODES' first (SIMCLUSTER_NAME=$NAME)"
  local nodes hosts="" n=""
  nodes=$(cat "$STATE/nodes")
  # ranks per node: -n total divided over the nodes (the -n value is read from the arguments)
  local args=("$@")
  for ((k = 0; k < ${#args[@]}; k++)); do  # the first -n: later ones belong to the program
    if [ "${args[k]}" = "-n" ] || [ "${args[k]}" = "-np" ]; then n=${args[k + 1]}; break; fi
  done
  [ -n "$n" ] || die "mpirun needs -n"
  for i in $(seq 1 "$nodes"); do
    local slots=$(( n / nodes + (i <= n % nodes ? 1 : 0) ))
    [ "$slots" -gt 0 ] && hosts+="${hosts:+,}$SUBNET.$i:$slots"
  done
  if mpirun --version 2>&1 | grep -q "Open MPI"; then
    # Open MPI (PRRTE): our launcher as its ssh agent; TCP on the cluster's subnet; no binding (every
    # node would pin its first rank to the same core of this one machine: 4 ms time slices per message)
    local root=()
    [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
    exec mpirun "${root[@]}" --prtemca plm_ssh_agent "$STATE/launch" --host "$hosts" --bind-to none \
      --prtemca oob_tcp_if_include "$SUBNET.0/24" --mca oob_tcp_if_include "$SUBNET.0/24" \
      --mca btl_tcp_if_include "$SUBNET.0/24" "$@"
  fi
  # MPICH (hydra)
  exec mpirun -iface "$BRIDGE" -launcher ssh -launcher-exec "$STATE/launch" -hosts "$hosts" "$@"
}

bytes() {
  local nodes
  nodes=$(cat "$STATE/nodes")
  for i in $(seq 1 "$nodes"); do
    # the bridge side receives what the node sends
    echo "node$i $(cat "/sys/class/net/${NAME}b$i/statistics/rx_bytes")"
  done
}

down() {
  local nodes=0
  [ -f "$STATE/nodes" ] && nodes=$(cat "$STATE/nodes")
  for i in $(seq 1 "$(( nodes > 0 ? nodes : 64 ))"); do
    ip netns del "${NAME}n$i" 2>/dev/null || true  # its veth end (and the tc rules on it) go with it
    ip link del "${NAME}b$i" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
}

case "${1:-}" in
  up) shift; [ $# -ge 1 ] || die "usage: $0 up NODES [RATE] [DELAY] [BURST]"; up "$@" ;;
  mpirun) shift; mpirun_ "$@" ;;
  bytes) bytes ;;
  down) down ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
