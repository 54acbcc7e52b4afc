# test/nats/cluster.sh --- a three-node NATS JetStream cluster on loopback
# for the nats transport's tests and benchmark (sourced after
# test/harness/lib.sh).
#
#   lh_nats_start DIR BASE   nodes n1 n2 n3: client ports BASE, BASE+1,
#                            BASE+2, cluster (route) ports BASE+10..12,
#                            monitoring ports BASE+20..22, all on
#                            127.0.0.1, JetStream stores under DIR;
#                            returns once every node answers; sets
#                            LH_NATS_URLS (the three client URLs, comma
#                            separated) and builds $LH_NATS_TOOL (lhnats.c)
#   lh_nats_kill I           kill -9 of node I (1..3)
#   lh_nats_restart I        start node I again on its store
#   lh_nats_node_of NAME     the index of the node whose server_name is NAME
#   lh_nats_client_node NAME the index of the node a client named NAME is
#                            connected to (from the nodes' /connz), or
#                            nothing
#   lh_nats_stop             stop every node (in the caller's EXIT trap)
#
# The servers run as the calling user, listening (clients, routes and
# monitoring) only on 127.0.0.1.

LH_NATS_DIR=
LH_NATS_BASE=
LH_NATS_PIDS=(0 0 0 0)
LH_NATS_TOOL=

lh_nats_conf()
{
	local i=$1 base=$LH_NATS_BASE
	cat <<EOF
server_name: n$i
listen: 127.0.0.1:$((base + i - 1))
http: 127.0.0.1:$((base + 19 + i))
jetstream {
  store_dir: "$LH_NATS_DIR/n$i"
}
cluster {
  name: lhub
  listen: 127.0.0.1:$((base + 9 + i))
  routes: [
    nats-route://127.0.0.1:$((base + 10))
    nats-route://127.0.0.1:$((base + 11))
    nats-route://127.0.0.1:$((base + 12))
  ]
}
EOF
}

lh_nats_wait_port()
{
	local port=$1 t
	for t in $(seq 1 100); do
		(exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "nats node on port $port did not start" >&2
	return 1
}

lh_nats_restart()
{
	local i=$1
	nats-server -c "$LH_NATS_DIR/n$i.conf" >>"$LH_NATS_DIR/n$i.log" 2>&1 &
	LH_NATS_PIDS[$i]=$!
	lh_nats_wait_port $((LH_NATS_BASE + i - 1))
}

lh_nats_start()
{
	local i
	LH_NATS_DIR=$1
	LH_NATS_BASE=$2
	mkdir -p "$LH_NATS_DIR"
	for i in 1 2 3; do
		lh_nats_conf "$i" >"$LH_NATS_DIR/n$i.conf"
		lh_nats_restart "$i"
	done
	LH_NATS_URLS="nats://127.0.0.1:$LH_NATS_BASE,nats://127.0.0.1:$((LH_NATS_BASE + 1)),nats://127.0.0.1:$((LH_NATS_BASE + 2))"
	LH_NATS_TOOL=$LH_NATS_DIR/lhnats
	cc -O2 -Wall -Werror -o "$LH_NATS_TOOL" "$LH_TOP/test/nats/lhnats.c" -lnats
}

lh_nats_kill()
{
	local i=$1
	[ "${LH_NATS_PIDS[$i]}" != 0 ] && kill -9 "${LH_NATS_PIDS[$i]}" 2>/dev/null
	wait "${LH_NATS_PIDS[$i]}" 2>/dev/null || true
	LH_NATS_PIDS[$i]=0
}

lh_nats_node_of()
{
	echo "${1#n}"
}

lh_nats_client_node()
{
	local i
	for i in 1 2 3; do
		[ "${LH_NATS_PIDS[$i]}" != 0 ] || continue
		# (python3, not curl: a fresh machine has no curl, the harness python3)
		if python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
except OSError:
    pass' "http://127.0.0.1:$((LH_NATS_BASE + 19 + i))/connz" | grep -q "\"name\": \"$1\""; then
			echo "$i"
			return 0
		fi
	done
}

lh_nats_stop()
{
	local i
	for i in 1 2 3; do
		# (a node never started has no pid: a start that failed stops too)
		[ "${LH_NATS_PIDS[$i]:-0}" != 0 ] || continue
		kill "${LH_NATS_PIDS[$i]}" 2>/dev/null || true
		wait "${LH_NATS_PIDS[$i]}" 2>/dev/null || true
		LH_NATS_PIDS[$i]=0
	done
}
