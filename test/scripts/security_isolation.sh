#!/usr/bin/env bash
# test/scripts/security_isolation.sh --- one event, endpoint or outcome that
# makes a dispatcher's step fail stops only itself, live.  Faults are made
# with triggers on hub.deliveries (a superuser's, standing in for whatever
# a future bug or bad row may do):
#   - routing raises for one event: the claim is done again piece by
#     piece, routing event by event; the event is kept in
#     hub.unroutable_events with the error, the others are delivered;
#   - leasing raises for one endpoint's deliveries: that endpoint is paused
#     with the reason audited (pause_failing), the others are delivered;
#   - recording a success raises for one endpoint: the outcomes are
#     recorded again one request at a time, that endpoint is paused, the
#     others' outcomes are recorded;
# the dispatcher never exits, and once the faults are gone and the
# endpoints resumed, everything held back is delivered (a backfill replay
# for the unroutable event).
source test/receiver/push_lib.sh
push_setup security-isolation 131 "logistics_hub.dispatcher_naptime = 200ms" "logistics_hub.lease = 5s"

is_t() { [ "$(q "$1")" = t ] || fail "$2"; }
delivered() {
	q "SELECT count(*) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
	   WHERE e.name = '$1' AND d.state = 'delivered'"
}

PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms'"
push_endpoint healthy "ok?ep=healthy"
push_endpoint poisoned "ok?ep=poisoned"
push_endpoint badrecord "ok?ep=badrecord" "timeout_ms => 1000"
log_lines=$(wc -l < "$LH_CLUSTER_DIR/server.log")

q "CREATE FUNCTION public.fault() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	IF TG_OP = 'INSERT' AND NEW.aggregate_id = 'POISON-ROUTE' THEN
		RAISE EXCEPTION 'fault: this event cannot be routed' USING ERRCODE = 'data_exception';
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.state = 'in_flight' AND OLD.state <> 'in_flight'
	   AND NEW.endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'poisoned') THEN
		RAISE EXCEPTION 'fault: this endpoint cannot be claimed' USING ERRCODE = 'data_exception';
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.state = 'delivered'
	   AND NEW.endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'badrecord') THEN
		RAISE EXCEPTION 'fault: this outcome cannot be recorded' USING ERRCODE = 'data_exception';
	END IF;
	RETURN NEW;
END \$\$" \
	"CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON hub.deliveries FOR EACH ROW EXECUTE FUNCTION public.fault()" >/dev/null

# routing: one event of ten cannot be routed
for i in 1 2 3 4 5; do push_publish healthy "H-$i" >/dev/null; done
poison=$(push_publish healthy POISON-ROUTE)
for i in 6 7 8 9; do push_publish healthy "H-$i" >/dev/null; done
must_wait "SELECT count(*) = 9 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'healthy' AND d.state = 'delivered'" 30 "the healthy events were not delivered past the unroutable one"
is_t "SELECT error LIKE '22000: fault: this event cannot be routed' FROM hub.unroutable_events WHERE event_id = '$poison'" \
	"the unroutable event is not kept with its error"
is_t "SELECT NOT EXISTS (SELECT 1 FROM hub.deliveries WHERE event_id = '$poison')" "the unroutable event got a delivery"
ok "routing: the event that cannot be routed is kept in hub.unroutable_events with its error; the other nine delivered"
for i in 10 11 12; do push_publish healthy "H-$i" >/dev/null; done
must_wait "SELECT count(*) = 12 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'healthy' AND d.state = 'delivered'" 30 "routing did not go on after the unroutable event"
ok "routing goes on past it"

# claiming: one endpoint's deliveries cannot be leased
for i in 1 2 3; do push_publish poisoned "P-$i" >/dev/null; push_publish healthy "H2-$i" >/dev/null; done
must_wait "SELECT paused FROM hub.endpoints WHERE name = 'poisoned'" 30 "the endpoint that cannot be claimed was not paused"
is_t "SELECT reason LIKE '%could not claim its deliveries: fault: this endpoint cannot be claimed (SQLSTATE 22000)%'
	  FROM hub.operator_audit WHERE action = 'pause_failing' AND target = 'poisoned'" "the pause's reason is not audited"
must_wait "SELECT count(*) = 15 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'healthy' AND d.state = 'delivered'" 30 "the healthy endpoint was not served meanwhile"
ok "claiming: the endpoint that cannot be claimed is paused with the reason audited; the healthy one is served"

# recording: one endpoint's successes cannot be recorded
for i in 1 2 3; do push_publish badrecord "B-$i" >/dev/null; push_publish healthy "H3-$i" >/dev/null; done
must_wait "SELECT paused FROM hub.endpoints WHERE name = 'badrecord'" 30 "the endpoint whose outcomes cannot be recorded was not paused"
is_t "SELECT bool_and(reason LIKE '%could not record an outcome: fault: this outcome cannot be recorded%')
	  FROM hub.operator_audit WHERE action = 'pause_failing' AND target = 'badrecord'" "the pause's reason is not audited"
must_wait "SELECT count(*) = 18 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'healthy' AND d.state = 'delivered'" 30 "the healthy endpoint's outcomes were not recorded meanwhile"
ok "recording: the endpoint whose outcomes cannot be recorded is paused with the reason audited; the healthy one's are recorded"

[ "$(dispatcher_pid)" = "$PUSH_DISPATCHER_PID" ] || fail "the dispatcher restarted"
if tail -n +"$((log_lines + 1))" "$LH_CLUSTER_DIR/server.log" | grep -E "exited with exit code|terminated by signal"; then
	fail "the server log shows the dispatcher exiting"
fi
tail -n +"$((log_lines + 1))" "$LH_CLUSTER_DIR/server.log" | grep -q 'WARNING:  logistics_hub dispatcher 0: claim failed: fault: this event cannot be routed' ||
	fail "no WARNING says the claim failed and why"
ok "the dispatcher ran throughout, the failures in the log as WARNINGs"

# the faults gone: everything held back is delivered
q "DROP TRIGGER fault ON hub.deliveries" \
	"SELECT hub.resume_endpoint('poisoned', 'fault fixed'), hub.resume_endpoint('badrecord', 'fault fixed')" >/dev/null
q "SELECT hub.replay_subscription(s.subscription_id, 'unroutable event fixed', from_time => o.occurred_at,
					 to_time => o.occurred_at + interval '1 microsecond')
   FROM hub.outbox o, hub.subscriptions s JOIN hub.endpoints e USING (endpoint_id)
   WHERE o.event_id = '$poison' AND e.name = 'healthy'" >/dev/null
must_wait "SELECT count(*) = 3 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'poisoned' AND d.state = 'delivered'" 60 "the paused endpoint's events were not delivered after the resume"
must_wait "SELECT count(*) = 3 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'badrecord' AND d.state = 'delivered'" 90 "the unrecorded outcomes' events were not delivered after the resume"
must_wait "SELECT count(*) = 1 FROM hub.deliveries WHERE event_id = '$poison' AND state = 'delivered'" 30 \
	"the unroutable event was not delivered by the backfill"
ok "after the fix: the paused endpoints' events and the unroutable event (backfilled) delivered"
push_finish
