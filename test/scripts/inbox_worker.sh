#!/usr/bin/env bash
# test/scripts/inbox_worker.sh --- the inbox workers, live: messages
# received with handlers are processed without anyone calling
# hub.process_inbox; a failing message retries on its schedule (woken at
# its next_attempt_at: the naptime here is 10 minutes, so nothing is found
# by the safety net) while the others go on; the messages of one business
# key are processed one at a time in order, also by two workers, and none
# twice; a plain INSERT wakes the workers too; a failing batch does not end
# a worker; logistics_hub.inbox_workers = 0 leaves messages untouched; a
# worker terminated by an administrator is started again.
source test/receiver/push_lib.sh
PUSH_DISPATCHERS=0 push_setup inbox-worker 143 "logistics_hub.inbox_workers = 2" \
	"logistics_hub.inbox_naptime = 10min"

inbox_pids() {
	q "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'"
}
# (a worker started before CREATE EXTENSION left and comes back after a pause)
must_wait "SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'" 30 \
	"two inbox workers did not start"
pids=$(inbox_pids)
[ "$(q "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'")" = hub_worker ] ||
	fail "the inbox workers do not run as hub_worker"
ok "two inbox workers ($pids) run as hub_worker"

# The fixture handler (SECURITY DEFINER, as applications write them): it
# records each successful run; kind 'flaky' fails twice (a sequence counts
# the failures: it is not rolled back with them), kind 'bad' always fails,
# kind 'assert' fails an ASSERT, which process_inbox's WHEN OTHERS does not
# catch: it fails the whole batch it is in.
q "CREATE TABLE public.seen (n bigserial PRIMARY KEY, msg text NOT NULL, key text, seq int,
	at timestamptz NOT NULL DEFAULT clock_timestamp())" \
	"CREATE SEQUENCE public.flaky_failures" \
	"CREATE FUNCTION public.h(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
	 SET search_path = pg_catalog, public AS \$\$
	 BEGIN
		IF p->>'kind' = 'assert' THEN
			ASSERT false, 'message ' || (p->>'msg') || ' asserts';
		END IF;
		IF p->>'kind' = 'bad' THEN
			RAISE EXCEPTION 'message % is broken', p->>'msg' USING ERRCODE = 'data_exception';
		END IF;
		IF p->>'kind' = 'flaky' THEN
			IF nextval('public.flaky_failures') <= 2 THEN
				RAISE EXCEPTION 'backend of % is down', p->>'msg' USING ERRCODE = 'connection_failure';
			END IF;
		END IF;
		INSERT INTO public.seen (msg, key, seq) VALUES (p->>'msg', p->>'key', (p->>'seq')::int);
	 END \$\$" \
	"SELECT hub.register_handler('t.*', 'public.h', max_attempts => 3, retry_base => '3 seconds')" >/dev/null

# 20 keys of 5 messages each, one transaction per message; K1's first
# message is flaky (fails twice: retried after 3 s, then 6 s), KB's first
# message is bad (dead after its third attempt); 10 messages without a key
q "DO \$\$
BEGIN
	FOR s IN 1..5 LOOP
		FOR k IN 1..20 LOOP
			PERFORM hub.receive('wms', 'K' || k || '-' || s, 't.status',
				jsonb_build_object('msg', 'K' || k || '-' || s, 'key', 'K' || k, 'seq', s,
								   'kind', CASE WHEN k = 1 AND s = 1 THEN 'flaky' END),
				aggregate_id => 'K' || k);
			COMMIT;
		END LOOP;
		PERFORM hub.receive('wms', 'KB-' || s, 't.status',
			jsonb_build_object('msg', 'KB-' || s, 'key', 'KB', 'seq', s, 'kind', CASE WHEN s = 1 THEN 'bad' END),
			aggregate_id => 'KB');
		PERFORM hub.receive('wms', 'free-' || s, 't.status', jsonb_build_object('msg', 'free-' || s));
		PERFORM hub.receive('wms', 'free-x' || s, 't.status', jsonb_build_object('msg', 'free-x' || s));
		COMMIT;
	END LOOP;
END \$\$" >/dev/null
total=$(q "SELECT count(*) FROM hub.inbox")
[ "$total" = 115 ] || fail "expected 115 messages, got $total"

# the others go on while K1 and KB wait for their retries
must_wait "SELECT count(*) = 95 + 10 FROM hub.inbox WHERE state = 'done' AND coalesce(aggregate_id, '') NOT IN ('K1', 'KB')" 30 \
	"the messages of the other keys were not processed"
got=$(q "SELECT string_agg(message_id || ':' || state, ',' ORDER BY message_id) FROM hub.inbox WHERE aggregate_id IN ('K1', 'KB')")
[ "$got" = "K1-1:retry_wait,K1-2:new,K1-3:new,K1-4:new,K1-5:new,KB-1:retry_wait,KB-2:new,KB-3:new,KB-4:new,KB-5:new" ] ||
	fail "K1 and KB should wait behind their failing first messages: $got"
ok "105 messages processed by the workers, nobody called hub.process_inbox; K1 and KB wait behind their failing first message"

# the flaky message succeeds on its third run, no earlier than its backoff
# allows (3 s + 6 s after it arrived); then K1's others follow in order
must_wait "SELECT count(*) = 5 FROM hub.inbox WHERE aggregate_id = 'K1' AND state = 'done'" 40 \
	"K1 was not processed after the flaky message's retries"
got=$(q "SELECT i.attempts || ' ' || (s.at >= i.received_at + interval '9 seconds') || ' ' || coalesce(i.last_error, '')
	FROM hub.inbox i JOIN public.seen s ON s.msg = i.message_id WHERE i.message_id = 'K1-1'")
[ "$got" = "2 true 08006: backend of K1-1 is down" ] || fail "the flaky message's retries: $got"
ok "the flaky message failed twice and succeeded after its backoff (3 s, 6 s) without the naptime's help"

must_wait "SELECT state = 'dead' FROM hub.inbox WHERE message_id = 'KB-1'" 40 "the bad message did not die"
must_wait "SELECT count(*) = 4 FROM hub.inbox WHERE aggregate_id = 'KB' AND state = 'done'" 30 \
	"KB's other messages were not processed after the bad one died"
got=$(q "SELECT attempts || ' ' || last_error FROM hub.inbox WHERE message_id = 'KB-1'")
[ "$got" = "3 22000: message KB-1 is broken" ] || fail "the bad message: $got"
got=$(q "SELECT bool_and(s.at >= b.processed_at) FROM public.seen s, hub.inbox b WHERE s.key = 'KB' AND b.message_id = 'KB-1'")
[ "$got" = t ] || fail "KB's messages ran before the bad one was dead"
ok "the bad message is dead after 3 attempts; the messages behind it ran only then"

# every message exactly once; per key in order
got=$(q "SELECT count(*) || ' ' || count(DISTINCT msg) FROM public.seen")
[ "$got" = "114 114" ] || fail "114 messages should have run once each: $got"
got=$(q "SELECT count(*) FROM (SELECT key FROM public.seen WHERE key IS NOT NULL GROUP BY key
	HAVING array_agg(seq ORDER BY n) <> (SELECT array_agg(g) FROM generate_series(min(seq), 5) g)) x")
[ "$got" = 0 ] || fail "$got keys were processed out of order: $(q "SELECT key, array_agg(seq ORDER BY n) FROM public.seen GROUP BY key")"
ok "114 messages ran once each (the dead one never succeeded), every key in order, with two workers"

# a plain INSERT wakes the workers too (the naptime is 10 minutes)
q "INSERT INTO hub.inbox (source, message_id, message_type, payload) VALUES ('erp', 'plain-1', 't.x', '{\"msg\": \"plain-1\"}')" >/dev/null
must_wait "SELECT state = 'done' FROM hub.inbox WHERE message_id = 'plain-1'" 20 "a plainly inserted message was not processed"
ok "a plain INSERT into hub.inbox woke a worker"

# a message that fails its whole batch (a failed ASSERT) is found by
# processing one at a time and set aside as a failed attempt; the ten
# received with it in one transaction (so in its batch) go on, and the
# message behind it in its key waits until it is dead
q "BEGIN" "SELECT hub.receive('wms', 'poison-1', 't.x', '{\"msg\": \"poison-1\", \"kind\": \"assert\"}', aggregate_id => 'KP')" \
	"SELECT hub.receive('wms', 'KP-2', 't.x', '{\"msg\": \"KP-2\", \"key\": \"KP\", \"seq\": 2}', aggregate_id => 'KP')" \
	"SELECT hub.receive('wms', 'with-poison-' || g, 't.x', jsonb_build_object('msg', 'with-poison-' || g)) FROM generate_series(1, 10) g" \
	"COMMIT" >/dev/null
must_wait "SELECT count(*) = 10 FROM hub.inbox WHERE message_id LIKE 'with-poison-%' AND state = 'done'" 20 \
	"the messages received with a message that fails its batch were not processed"
got=$(q "SELECT state || ' ' || attempts || ' ' || last_error FROM hub.inbox WHERE message_id = 'poison-1'")
case $got in
	"retry_wait 1 P0004: message poison-1 asserts"|"retry_wait 2 P0004: message poison-1 asserts") ;;
	*) fail "the message failing its batch should wait for a retry: $got" ;;
esac
[ "$(q "SELECT state FROM hub.inbox WHERE message_id = 'KP-2'")" = new ] || fail "KP-2 did not wait behind poison-1"
grep -q 'WARNING:  logistics_hub inbox worker [01]: inbox message [0-9]* failed its batch, set aside as a failed attempt: P0004: message poison-1 asserts' \
	"$LH_CLUSTER_DIR/server.log" || fail "no WARNING naming the message set aside"
ok "a message failing its whole batch (ASSERT) was found and set aside (retry_wait, P0004 kept); the ten in its batch were processed"
must_wait "SELECT state = 'dead' AND attempts = 3 FROM hub.inbox WHERE message_id = 'poison-1'" 30 \
	"the message failing its batch did not die after max_attempts"
must_wait "SELECT state = 'done' FROM hub.inbox WHERE message_id = 'KP-2'" 20 "KP-2 was not processed after poison-1 died"
ok "it was retried on its backoff and is dead after 3 attempts; the message behind it in its key then ran"

# a failing batch (here: the worker's role lost a grant) does not end a worker
q "REVOKE EXECUTE ON FUNCTION hub._inbox_claim(integer) FROM hub_worker" >/dev/null
q "SELECT hub.receive('erp', 'after-revoke', 't.x', '{\"msg\": \"after-revoke\"}')" >/dev/null
for _ in $(seq 200); do
	grep -q 'WARNING:  logistics_hub inbox worker [01]: process failed: permission denied for function _inbox_claim' \
		"$LH_CLUSTER_DIR/server.log" && break
	sleep 0.1
done
grep -q 'WARNING:  logistics_hub inbox worker [01]: process failed: permission denied for function _inbox_claim' \
	"$LH_CLUSTER_DIR/server.log" || fail "no WARNING for the failing batch"
q "GRANT EXECUTE ON FUNCTION hub._inbox_claim(integer) TO hub_worker" >/dev/null
q "SELECT hub.receive('erp', 'after-grant', 't.x', '{\"msg\": \"after-grant\"}')" >/dev/null
must_wait "SELECT count(*) = 2 FROM hub.inbox WHERE message_id IN ('after-revoke', 'after-grant') AND state = 'done'" 20 \
	"the workers did not go on after a failing batch"
[ "$(inbox_pids)" = "$pids" ] || fail "an inbox worker changed: $pids at start, now $(inbox_pids)"
ok "a failing batch is a WARNING; the workers ($pids) went on"

# inbox_workers = 0: nothing is processed
q "ALTER SYSTEM SET logistics_hub.inbox_workers = 0" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'" 20 \
	"the inbox workers did not leave"
q "SELECT hub.receive('erp', 'off-' || g, 't.x', jsonb_build_object('msg', 'off-' || g)) FROM generate_series(1, 3) g" >/dev/null
sleep 2
got=$(q "SELECT string_agg(state || '/' || attempts, ',') FROM hub.inbox WHERE message_id LIKE 'off-%'")
[ "$got" = "new/0,new/0,new/0" ] || fail "with inbox_workers = 0 the messages changed: $got"
ok "with logistics_hub.inbox_workers = 0 received messages stay new"
q "ALTER SYSTEM SET logistics_hub.inbox_workers = 1" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 3 FROM hub.inbox WHERE message_id LIKE 'off-%' AND state = 'done'" 30 \
	"a worker started again did not process what waited"
ok "a worker started again processed what waited"

# a worker stopped by an administrator (SIGTERM) is started again by the
# launcher, and the next message is processed
old=$(inbox_pids)
q "SELECT pg_terminate_backend($old)" >/dev/null
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox' AND pid <> $old" 30 \
	"the launcher did not start the inbox worker again after pg_terminate_backend"
q "SELECT hub.receive('erp', 'after-terminate', 't.x', '{\"msg\": \"after-terminate\"}')" >/dev/null
must_wait "SELECT state = 'done' FROM hub.inbox WHERE message_id = 'after-terminate'" 20 \
	"the restarted inbox worker did not process a new message"
ok "an inbox worker terminated by pg_terminate_backend was started again ($old -> $(inbox_pids)) and goes on"

got=$(q "SELECT count(*) - count(DISTINCT msg) FROM public.seen")
[ "$got" = 0 ] || fail "$got messages ran more than once"
ok "no message ran twice in the whole run"

if grep -E "terminated by signal|exited with exit code [^01]|PANIC|TRAP:" "$LH_CLUSTER_DIR/server.log"; then
	fail "the server log shows a worker crash"
fi
ok "no crash in the server log"
