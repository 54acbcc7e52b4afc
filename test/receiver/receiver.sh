#!/usr/bin/env bash
# test/receiver/receiver.sh --- start and stop the loopback test receiver
# (receiver.py) from a test script.  Source it after test/harness/lib.sh.
#
#   lh_receiver_start DIR   starts a receiver on a free 127.0.0.1 port with
#                           its log in DIR/receiver.log; sets RECV_PORT,
#                           RECV_URL (http://127.0.0.1:PORT), RECV_LOG and
#                           RECV_PID.  The receiver stops with lh_receiver_stop
#                           (call it from the script's EXIT trap).
#   lh_receiver_verify SECRET [--secret SECRET2] [--path S]
#                           Standard Webhooks check of every signed request
#                           in the log, or of those whose path contains S
#                           (Python's hmac, not ours); with several secrets
#                           every one must match a signature of the request.

LH_RECEIVER=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/receiver.py

lh_receiver_start()
{
	local dir=$1 i
	mkdir -p "$dir"
	RECV_LOG=$dir/receiver.log
	rm -f "$dir/receiver.port" "$RECV_LOG"
	: >"$RECV_LOG"
	python3 "$LH_RECEIVER" serve --port-file "$dir/receiver.port" --log "$RECV_LOG" \
		>"$dir/receiver.out" 2>&1 &
	RECV_PID=$!
	for i in $(seq 100); do
		[ -s "$dir/receiver.port" ] && break
		kill -0 "$RECV_PID" 2>/dev/null || { cat "$dir/receiver.out" >&2; return 1; }
		sleep 0.05
	done
	RECV_PORT=$(cat "$dir/receiver.port")
	RECV_URL=http://127.0.0.1:$RECV_PORT
	export RECV_PORT RECV_URL RECV_LOG RECV_PID
}

lh_receiver_stop()
{
	[ -n "${RECV_PID:-}" ] && kill "$RECV_PID" 2>/dev/null
	RECV_PID=
	return 0
}

# lh_receiver_control NAME [VALUE] --- set (or clear) a control value
# (with python3, which the harness installs, not curl, which it does not)
lh_receiver_control()
{
	python3 -c 'import sys, urllib.parse, urllib.request
url = "%s/_control?%s" % (sys.argv[1], urllib.parse.urlencode({"name": sys.argv[2], "value": sys.argv[3]}))
urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10).read()' \
		"$RECV_URL" "$1" "${2:-}"
}

lh_receiver_verify()
{
	python3 "$LH_RECEIVER" verify --log "$RECV_LOG" --secret "$1" "${@:2}"
}
