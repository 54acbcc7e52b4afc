#!/usr/bin/env bash
# test/scripts/push_routed_wake.sh --- with two dispatchers, the one that
# routes a commit's events creates deliveries that the other may lease (an
# endpoint's shard), and that other may have looked for work already: the
# routing step wakes the database's dispatchers at its commit, so a
# delivery never waits for the naptime.  Here the naptime is ten minutes:
# round after round, an event for an endpoint of each shard is published
# and every delivery must be done well within it (the wake, not the
# naptime, delivers them).
source test/receiver/push_lib.sh
PUSH_DISPATCHERS=2 push_setup push-routed-wake 175 "logistics_hub.dispatcher_naptime = 10min"

push_endpoint even "ok?ep=even"
push_endpoint odd "ok?ep=odd"
shards=$(q "SELECT string_agg(DISTINCT (endpoint_id % 2)::text, ',' ORDER BY (endpoint_id % 2)::text) FROM hub.endpoints")
[ "$shards" = "0,1" ] || fail "the two endpoints are not of both shards: $shards"

for round in $(seq 1 12); do
	q "BEGIN" \
	  "SELECT hub.publish('order.created', 'r$round-' || t, jsonb_build_object('order_id', 'r$round-' || t, 't', t))
	   FROM unnest(ARRAY['even', 'odd']) t" \
	  "COMMIT" >/dev/null
	must_wait "SELECT count(*) = 2 * $round AND bool_and(state = 'delivered') FROM hub.deliveries" 60 \
		"round $round: not delivered within a minute while the naptime is ten (the dispatcher that serves it was not woken)"
done
ok "12 rounds, each event delivered by the dispatcher of its endpoint's shard without waiting for the ten-minute naptime"
push_finish
