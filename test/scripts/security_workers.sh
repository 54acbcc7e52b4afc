#!/usr/bin/env bash
# test/scripts/security_workers.sh --- no path from a database role to the
# workers' rights, and no user code that stops delivery, live:
#   - the dispatcher connects as hub_worker, not as a superuser;
#   - the database owner (mallory, who may create in public) plants in
#     public a make_interval(secs bigint) and the comparison operators the
#     workers' statements use, and sets search_path, read-only
#     transactions, timeouts and serializable isolation for the database;
#   - a hub_admin member (eve) plants the same in a schema of her own and
#     subscribes with a SECURITY DEFINER transform that puts that schema on
#     the path, makes transactions read-only and sets 1 ms timeouts with
#     set_config(..., false), and loops for ever on some events;
# then: none of the planted functions or operators ever runs, the settings
# never reach the dispatcher's next statement, the looping transform is
# cancelled after logistics_hub.user_code_timeout each time and retried
# while the other endpoints are served, everything else is delivered
# meanwhile and afterwards, and the dispatcher never restarts.  The same
# for an inbox worker started under those defaults, running eve's handler
# that sets the same settings: every message processed, nothing planted
# run, the worker never restarted.  Last, a superuser named in
# logistics_hub.worker_role is refused.
source test/receiver/push_lib.sh
push_setup security-workers 130 "logistics_hub.poll_interval = 200ms" "logistics_hub.user_code_timeout = 500ms"

is_t() { [ "$(q "$1")" = t ] || fail "$2"; }

is_t "SELECT bool_and(usename = 'hub_worker') FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" \
	"the dispatcher does not run as hub_worker"
ok "the dispatcher connects as hub_worker"

# the attackers and what they plant
q "CREATE ROLE mallory LOGIN" "GRANT CREATE ON SCHEMA public TO mallory" "ALTER DATABASE postgres OWNER TO mallory" \
	"CREATE ROLE eve LOGIN" "GRANT hub_admin TO eve" "CREATE SCHEMA evil AUTHORIZATION eve" \
	"CREATE TABLE public.spy (who text, what text)" "GRANT INSERT, SELECT ON public.spy TO PUBLIC" >/dev/null

# plant SCHEMA ROLE --- as ROLE, in SCHEMA: make_interval(secs bigint) and
# every comparison operator on the types the workers' statements compare,
# each recording in public.spy that it ran (and as whom) before answering
# like the real one
plant() {
	q "SET ROLE $2" "
	CREATE FUNCTION $1.make_interval(secs bigint) RETURNS interval LANGUAGE plpgsql AS \$\$
	BEGIN
		INSERT INTO public.spy VALUES (current_user, '$1.make_interval');
		RETURN pg_catalog.make_interval(secs => secs::float8);
	END \$\$" "
	DO \$\$
	DECLARE
		op text;
		t text[];
		n int := 0;
	BEGIN
		FOREACH op IN ARRAY ARRAY['=', '<>', '<', '<=', '>', '>='] LOOP
			FOREACH t SLICE 1 IN ARRAY ARRAY[['bigint', 'bigint'], ['bigint', 'integer'], ['integer', 'integer'],
											  ['text', 'text'], ['uuid', 'uuid'],
											  ['timestamptz', 'timestamptz']] LOOP
				n := n + 1;
				EXECUTE pg_catalog.format(\$f\$
					CREATE FUNCTION $1.spy_op_%s(a %s, b %s) RETURNS boolean LANGUAGE plpgsql AS \$b\$
					BEGIN
						INSERT INTO public.spy VALUES (current_user, '$1.' || %L);
						RETURN a OPERATOR(pg_catalog.%s) b;
					END \$b\$ \$f\$, n, t[1], t[2], op || '(' || t[1] || ',' || t[2] || ')', op);
				EXECUTE pg_catalog.format('CREATE OPERATOR $1.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = $1.spy_op_%s)',
										  op, t[1], t[2], n);
			END LOOP;
		END LOOP;
	END \$\$" >/dev/null
}
plant public mallory
plant evil eve
is_t "SELECT count(*) = 72 FROM pg_operator WHERE oprnamespace IN ('public'::regnamespace, 'evil'::regnamespace)" \
	"the operators were not planted"
# (they are live: a session that puts public first runs them)
q "SET search_path = public, pg_catalog" "SELECT 1::bigint = 1::bigint" >/dev/null
is_t "SELECT count(*) = 1 FROM public.spy" "a planted operator does not run where public comes first"
q "DELETE FROM public.spy" >/dev/null

# the database owner's defaults for every new session of the database; this
# test's own sessions set theirs back
q "SET ROLE mallory" "ALTER DATABASE postgres SET search_path = public, pg_catalog" \
	"ALTER DATABASE postgres SET default_transaction_read_only = on" \
	"ALTER DATABASE postgres SET statement_timeout = '1ms'" \
	"ALTER DATABASE postgres SET lock_timeout = '1ms'" \
	"ALTER DATABASE postgres SET default_transaction_isolation = serializable" >/dev/null
export PGOPTIONS="-c search_path=pg_catalog,public -c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0 -c default_transaction_isolation=read\\ committed"

# a dispatcher started under those defaults
old_pid=$PUSH_DISPATCHER_PID
q "SELECT pg_terminate_backend($old_pid)" >/dev/null
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher' AND pid <> $old_pid" 30 \
	"no new dispatcher after the first was stopped"
PUSH_DISPATCHER_PID=$(dispatcher_pid)
log_lines=$(wc -l < "$LH_CLUSTER_DIR/server.log")

# eve's transform: settings that would outlive it, and a loop for some events
q "SET ROLE eve" "
CREATE FUNCTION evil.xf(p jsonb) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS \$\$
BEGIN
	PERFORM pg_catalog.set_config('search_path', 'evil, public, pg_catalog', false);
	PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);
	PERFORM pg_catalog.set_config('statement_timeout', '1', false);
	PERFORM pg_catalog.set_config('lock_timeout', '1', false);
	PERFORM pg_catalog.set_config('default_transaction_isolation', 'serializable', false);
	IF p ? 'loop' THEN
		LOOP
			PERFORM pg_catalog.pg_sleep(0.05);
		END LOOP;
	END IF;
	RETURN p || '{\"transformed\": true}';
END \$\$" >/dev/null

PUSH_SUB="max_attempts => 1000, retry_base => '100 ms', retry_max => '200 ms'"
push_endpoint healthy "ok?ep=healthy"
# a receiver that fails with Retry-After: the failure path's make_interval
PUSH_SUB="max_attempts => 2, retry_base => '100 ms', retry_max => '200 ms'" \
	push_endpoint flaky "status/503?retry_after=1&ep=flaky"
q "UPDATE hub.endpoints SET circuit_failure_threshold = 1000 WHERE name = 'flaky'" >/dev/null
q "SET ROLE eve" "SELECT hub.create_endpoint('xf', '$RECV_URL/ok?ep=xf', 'other')" \
	"SELECT hub.subscribe('xf', 'order.*', filter => '{\"t\": \"xf\"}', transform => 'evil.xf',
						  max_attempts => 1000, retry_base => '100 ms', retry_max => '200 ms')" >/dev/null

for i in 1 2 3 4 5; do
	push_publish healthy "H-$i" >/dev/null
	push_publish flaky "F-$i" >/dev/null
	push_publish xf "X-$i" >/dev/null
done
q "SELECT hub.publish('order.created', 'LOOP-' || i, pg_catalog.jsonb_build_object('order_id', 'LOOP-' || i, 't', 'xf', 'loop', true))
   FROM pg_catalog.generate_series(1, 2) i" >/dev/null

must_wait "SELECT count(*) >= 2 FROM hub.attempts WHERE error LIKE '%ran longer than logistics_hub.user_code_timeout%'" 60 \
	"the looping transform was not cancelled"
# while the looping events are retried, everything else gets through
for i in 6 7 8 9 10; do
	push_publish healthy "H-$i" >/dev/null
	push_publish xf "X-$i" >/dev/null
done
must_wait "SELECT count(*) = 10 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'healthy' AND d.state = 'delivered'" 60 "the healthy endpoint was not served"
must_wait "SELECT count(*) = 10 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'xf' AND d.state = 'delivered'" 60 "the transformed events were not delivered"
must_wait "SELECT count(*) = 5 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'flaky' AND d.state = 'dead' AND d.attempts = 2" 60 "the failing endpoint's events did not end dead"
loops_then=$(q "SELECT count(*) FROM hub.attempts WHERE error LIKE '%user_code_timeout%'")
must_wait "SELECT count(*) > $loops_then FROM hub.attempts WHERE error LIKE '%user_code_timeout%'" 60 \
	"the looping events were not retried"
is_t "SELECT bool_and(d.state = 'retry_wait' OR d.state = 'in_flight') FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
	  WHERE o.aggregate_id LIKE 'LOOP-%'" "the looping events are not waiting for another try"
ok "the looping transform is cancelled after the time limit each try ($loops_then so far) and retried, while the other endpoints get all 25 of their events"
got=$(recv 'print(sum(1 for e in E if "ep=xf" in e["path"] and json.loads(e["body"])["data"].get("transformed") is True))')
[ "$got" = 10 ] || fail "the receiver got $got transformed bodies, not 10"
ok "the transform's result was sent"

# afterwards: the looping events skipped, new events of every kind delivered
# (a delivery is skipped between its tries, not while leased)
for _ in $(seq 1 100); do
	q "SELECT hub.skip_delivery(d.delivery_id, 'test: looping transform')
	   FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
	   WHERE o.aggregate_id LIKE 'LOOP-%' AND d.state = 'retry_wait'" >/dev/null 2>&1 || true
	[ "$(q "SELECT count(*) FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
			WHERE o.aggregate_id LIKE 'LOOP-%' AND d.state = 'skipped'")" = 2 ] && break
	sleep 0.1
done
is_t "SELECT count(*) = 2 FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
	  WHERE o.aggregate_id LIKE 'LOOP-%' AND d.state = 'skipped'" "the looping events could not be skipped"
for i in 11 12 13; do
	push_publish healthy "H-$i" >/dev/null
	push_publish xf "X-$i" >/dev/null
done
must_wait "SELECT count(*) = 26 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name IN ('healthy', 'xf') AND d.state = 'delivered'" 60 "events published afterwards were not delivered"
ok "afterwards, new events of both endpoints are delivered"

# an inbox worker started under the database owner's defaults, running a
# handler of eve's that sets the same settings for good (and once fails)
q "SET ROLE eve" "
CREATE FUNCTION evil.h(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS \$\$
BEGIN
	PERFORM pg_catalog.set_config('search_path', 'evil, public, pg_catalog', false);
	PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);
	PERFORM pg_catalog.set_config('statement_timeout', '1', false);
	PERFORM pg_catalog.set_config('lock_timeout', '1', false);
	PERFORM pg_catalog.set_config('default_transaction_isolation', 'serializable', false);
	IF p ? 'fail' AND pg_catalog.nextval('evil.fails') OPERATOR(pg_catalog.=) 1 THEN
		RAISE EXCEPTION 'once';
	END IF;
END \$\$" "CREATE SEQUENCE evil.fails" "GRANT USAGE ON SCHEMA evil TO PUBLIC" \
	"SELECT hub.register_handler('evil.*', 'evil.h', retry_base => '100 ms')" >/dev/null
q "ALTER SYSTEM SET logistics_hub.inbox_workers = 1" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox' AND usename = 'hub_worker'" 30 \
	"no inbox worker started as hub_worker"
inbox_pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'")
q "SELECT hub.receive('wms', 'E-' || i, 'evil.x', CASE WHEN i = 3 THEN '{\"fail\": true}' ELSE '{}' END::jsonb,
	aggregate_id => 'K' || i % 2) FROM pg_catalog.generate_series(1, 6) i" >/dev/null
must_wait "SELECT count(*) = 6 FROM hub.inbox WHERE message_id LIKE 'E-%' AND state = 'done'" 30 \
	"the inbox worker did not process every message under the hostile defaults and handler"
is_t "SELECT attempts = 1 FROM hub.inbox WHERE message_id = 'E-3'" "the failing message was not retried once"
[ "$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'")" = "$inbox_pid" ] ||
	fail "the inbox worker restarted"
ok "an inbox worker started under the database owner's defaults ran eve's handler (which sets them for good) on 6 messages, one retried; it never restarted"

# nothing planted ever ran, nobody became superuser, the dispatcher never restarted
spied=$(q "SELECT coalesce(string_agg(DISTINCT who || ': ' || what, ', '), '') FROM public.spy")
[ -z "$spied" ] || fail "planted code ran: $spied"
is_t "SELECT NOT bool_or(rolsuper) FROM pg_roles WHERE rolname IN ('mallory', 'eve', 'hub_worker')" "somebody became superuser"
ok "none of the 74 planted functions and operators ran, in public or on the transform's or the handler's path"
[ "$(dispatcher_pid)" = "$PUSH_DISPATCHER_PID" ] || fail "the dispatcher restarted"
if tail -n +"$((log_lines + 1))" "$LH_CLUSTER_DIR/server.log" | grep -E "exited with exit code|terminated by signal|read-only transaction|statement timeout|could not serialize"; then
	fail "the server log shows the dispatcher failing"
fi
ok "the dispatcher ran throughout under the database owner's defaults and the transform's settings"

# a superuser named as the workers' role is refused
q "ALTER SYSTEM SET logistics_hub.worker_role = 'postgres'" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type IN ('logistics_hub dispatcher', 'logistics_hub inbox')" 30 \
	"a dispatcher or an inbox worker still runs with a superuser as logistics_hub.worker_role"
for _ in $(seq 1 100); do
	grep -q 'dispatchers will not run as superuser "postgres"' "$LH_CLUSTER_DIR/server.log" && break
	sleep 0.1
done
grep -q 'dispatchers will not run as superuser "postgres"' "$LH_CLUSTER_DIR/server.log" ||
	fail "no warning names the refused role"
q "ALTER SYSTEM RESET logistics_hub.worker_role" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher' AND usename = 'hub_worker'" 30 \
	"the dispatcher did not come back as hub_worker"
ok "a superuser as logistics_hub.worker_role is refused with a warning; hub_worker again once reset"
