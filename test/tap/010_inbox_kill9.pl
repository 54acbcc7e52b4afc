
# test/tap/010_inbox_kill9.pl --- kill -9 of the inbox worker, then of the
# postmaster, while the worker processes a stream of messages whose handler
# applies a status (hub.apply_status: entity state and status history) AND
# publishes an event (hub.publish: the outbox) for each; in the second
# round, where the extension has them, a declared mapping (hub.map_inbox)
# applies them instead, and hub.apply_status publishes the canonical
# event of each state change (hub.state_events).  The state change
# and its event commit together with the message's settlement, in the
# worker's batch transaction, so after recovery every message is processed
# exactly once: per message one history row and one event, per key the
# history in the order of its messages and the state of the last one;
# nothing applied twice, nothing lost.  A receiving session cut off by the
# crash loses at most its uncommitted message, which is then not in the
# inbox at all.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use IPC::Run;
use LhubCrash;

my $KEYS = 400;    # keys per round, three messages each (in_transit, out_for_delivery, delivered)
my $node = lh_node('inbox_kill9', inbox_workers => 1, conf => "logistics_hub.inbox_batch = 100\n");

$node->safe_psql(
	'postgres', q{
INSERT INTO hub.event_types (event_type, required_keys) VALUES ('shipment.moved', '{shipment_id,code}');
-- counts every run of the handler, also those rolled back by a crash
CREATE SEQUENCE public.handler_runs;
-- a handler as applications write them: the status and its event, in the
-- message's subtransaction; a millisecond of work each, so the stream
-- lasts seconds and the fault lands in the middle of a batch
CREATE FUNCTION public.apply_and_publish(p jsonb, t text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
	r hub.apply_result;
BEGIN
	PERFORM pg_sleep(0.001), nextval('public.handler_runs');
	r := hub.apply_status('shipment', p->>'key', 'easypost', p->>'code', (p->>'at')::timestamptz);
	PERFORM hub.publish('shipment.moved', p->>'key',
		jsonb_build_object('shipment_id', p->>'key', 'code', p->>'code', 'msg', p->>'msg',
						   'outcome', r.outcome));
END
$$;
SELECT hub.register_handler('tracker.*', 'public.apply_and_publish');
});
# where the extension has declared mappings (hub.map_inbox), the second
# round's records are applied by one instead of a handler
my $has_map = $node->safe_psql('postgres', "SELECT to_regproc('hub.map_inbox') IS NOT NULL") eq 't';
our $has_state_events = $node->safe_psql('postgres', "SELECT to_regclass('hub.state_events') IS NOT NULL") eq 't';
$node->safe_psql('postgres',
	"SELECT hub.map_inbox('mapped.*', 'shipment', 'easypost', '\$.key', '\$.code', occurred_at_path => '\$.at')")
  if $has_map;
my $type2 = $has_map ? 'mapped.tracker' : 'tracker.updated';

sub inbox_pids
{
	my $out = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox' ORDER BY pid");
	return grep { $_ ne '' } split /\n/, $out;
}

sub wait_inbox_worker
{
	my (%opt) = @_;
	my %old = map { $_ => 1 } @{ $opt{except} // [] };
	return lh_wait_until(sub { my @p = grep { !$old{$_} } inbox_pids(); @p == 1 }, $opt{secs} // 30, 100);
}

# the messages of round R: three per key, the key's codes in order, each
# message its own transaction (a stream, as receivers write it); in two
# halves sent by two sessions, so that one of them is cut off by the crash
sub stream_sql
{
	my ($round, $from, $to, $type) = @_;
	return qq{
DO \$\$
BEGIN
	FOR s IN 1..3 LOOP
		FOR k IN $from..$to LOOP
			PERFORM hub.receive('easypost', 'r$round-' || k || '-' || s, '$type',
				jsonb_build_object('key', 'R$round-' || k, 'msg', 'r$round-' || k || '-' || s,
					'code', (ARRAY['in_transit', 'out_for_delivery', 'delivered'])[s],
					'at', '2026-01-01 00:00:00+00'::timestamptz + s * interval '1 hour'),
				aggregate_id => 'R$round-' || k);
			COMMIT;
			PERFORM pg_sleep(0.004);
		END LOOP;
	END LOOP;
END
\$\$;
};
}

# the share of a stream processed when the fault comes: at most 60 %, so
# that the fault falls inside the stream (checked below) even on a loaded
# machine, where a look at the count (a psql each) takes a while and the
# worker keeps up with the receivers (the last 40 % is over a second)
sub fault_point
{
	return 0.1 + rand(0.5);
}

sub bg_stream
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err);
	return { h => $h, err => \$err };
}

sub bg_finish
{
	my ($bg) = @_;
	$bg->{h}->finish;
	return ${ $bg->{err} };
}

sub done_count
{
	my ($round) = @_;
	return lh_count($node, "SELECT count(*) FROM hub.inbox WHERE message_id LIKE 'r$round-%' AND state = 'done'");
}

# check ROUND, LABEL, HANDLER --- every message of the round in the inbox
# is done, and applied exactly once: one status history row of its own, one
# handler event (shipment.moved) of its own when HANDLER, and, where the
# extension publishes canonical events (hub.state_events), exactly one
# canonical event per state change, of the new state's type
sub check_round
{
	my ($round, $label, $handler) = @_;
	ok( defined lh_wait_until(
			sub {
				lh_count($node,
					"SELECT count(*) FROM hub.inbox WHERE state <> 'done' AND message_id LIKE 'r$round-%'") == 0;
			},
			60),
		"$label: every received message is processed after recovery");
	my $msgs = lh_count($node, "SELECT count(*) FROM hub.inbox WHERE message_id LIKE 'r$round-%'");
	my $hist = lh_count($node, "SELECT count(*) FROM hub.status_history WHERE business_key LIKE 'R$round-%'");
	my $moves = lh_count($node,
		"SELECT count(*) FROM hub.status_history WHERE business_key LIKE 'R$round-%' AND outcome IN ('created', 'advanced', 'corrected')");
	my $hevents = lh_count($node,
		"SELECT count(*) FROM hub.outbox WHERE aggregate_id LIKE 'R$round-%' AND event_type = 'shipment.moved'");
	my $cevents = lh_count($node,
		"SELECT count(*) FROM hub.outbox WHERE aggregate_id LIKE 'R$round-%' AND event_type <> 'shipment.moved'");
	note "$label: $msgs messages, $hist history rows ($moves state changes), $hevents handler events, "
	  . "$cevents canonical events; handler runs so far "
	  . lh_count($node, "SELECT last_value FROM public.handler_runs") . " (runs rolled back by a crash are done again)";
	ok($msgs > 0, "$label: messages were received");
	is($hist, $msgs, "$label: one status history row per message");
	is( lh_count(
			$node, qq{
SELECT count(*) FROM hub.inbox i
WHERE i.message_id LIKE 'r$round-%'
  AND (SELECT count(*) FROM hub.status_history h WHERE h.business_key = i.aggregate_id AND h.code = i.payload->>'code') <> 1
}),
		0,
		"$label: every message has exactly one history row of its own");
	if ($handler)
	{
		is($hevents, $msgs, "$label: one handler event per message");
		is( lh_count(
				$node, qq{
SELECT count(*) FROM hub.inbox i
WHERE i.message_id LIKE 'r$round-%'
  AND (SELECT count(*) FROM hub.outbox o WHERE o.aggregate_id = i.aggregate_id AND o.payload->>'msg' = i.message_id) <> 1
}),
			0,
			"$label: every message has exactly one handler event of its own");
		is( lh_count(
				$node, qq{
SELECT count(*) FROM hub.status_history h
WHERE h.business_key LIKE 'R$round-%' AND NOT EXISTS (
	SELECT FROM hub.outbox o WHERE o.aggregate_id = h.business_key AND o.payload->>'code' = h.code
		AND o.payload->>'outcome' = h.outcome)
}),
			0,
			"$label: every status applied has the handler's event, with the same outcome (they committed together)");
	}
	else
	{
		is($hevents, 0, "$label: no handler ran (the mapping applied the messages)");
	}
	if ($has_state_events)
	{
		is($cevents, $moves, "$label: one canonical event per state change");
		is( lh_count(
				$node, qq{
SELECT count(*) FROM hub.status_history h
WHERE h.business_key LIKE 'R$round-%' AND h.outcome IN ('created', 'advanced', 'corrected')
  AND (SELECT count(*) FROM hub.outbox o JOIN hub.state_events se
		ON se.lifecycle = 'shipment' AND se.state = h.new_state AND se.event_type = o.event_type
	   WHERE o.aggregate_id = h.business_key) <> 1
}),
			0,
			"$label: every state change has exactly one canonical event of its new state (committed together)");
	}
	is( lh_count(
			$node, qq{
SELECT count(*) FROM hub.status_history WHERE business_key LIKE 'R$round-%' AND outcome NOT IN ('created', 'advanced')
}),
		0,
		"$label: no report was applied twice or out of order (no duplicate or stale outcome)");
	is( lh_count(
			$node, qq{
SELECT count(*) FROM (
	SELECT DISTINCT ON (aggregate_id) aggregate_id, payload->>'code' AS last_code
	FROM hub.inbox WHERE message_id LIKE 'r$round-%' ORDER BY aggregate_id, inbox_id DESC
) x LEFT JOIN hub.entity_state e ON e.lifecycle = 'shipment' AND e.business_key = x.aggregate_id
WHERE e.state IS DISTINCT FROM x.last_code
}),
		0,
		"$label: every key's state is that of its last message");
}

# ---- round 1: kill -9 of the inbox worker
ok(defined wait_inbox_worker(), 'an inbox worker is running');
my @bg = (bg_stream(stream_sql(1, 1, $KEYS / 2, 'tracker.updated')),
	bg_stream(stream_sql(1, $KEYS / 2 + 1, $KEYS, 'tracker.updated')));
my $at = fault_point();
ok(defined lh_wait_until(sub { done_count(1) >= int(3 * $KEYS * $at) }, 60),
	sprintf('%.0f%% of the stream processed', 100 * $at));
my ($pid) = inbox_pids();
my $done = done_count(1);
ok($done < 3 * $KEYS, "the fault comes in the middle of the stream ($done of " . 3 * $KEYS . " done)");
my $offset = -s $node->logfile;
my $received = lh_count($node, "SELECT count(*) FROM hub.inbox WHERE message_id LIKE 'r1-%'");
note "SIGKILL to inbox worker $pid with $done messages done, $received received";
kill 'KILL', $pid;
ok( $node->wait_for_log(
		qr/background worker "logistics_hub inbox" \(PID $pid\) was terminated by signal 9/, $offset),
	'the postmaster saw the inbox worker die of signal 9');
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
	'the cluster reinitialized (a crash of a worker is a crash of the server)');
ok(defined wait_inbox_worker(except => [$pid]), 'a new inbox worker is running after the crash restart');
my $errors = join('', map { bg_finish($_) } @bg);
like($errors, qr/terminating connection because of crash of another server process|server closed the connection unexpectedly/,
	'a receiving session still running was cut off by the reset')
  if $received < 3 * $KEYS;
check_round(1, 'after kill -9 of the inbox worker', 1);

# ---- round 2: kill -9 of the postmaster
@bg = (bg_stream(stream_sql(2, 1, $KEYS / 2, $type2)), bg_stream(stream_sql(2, $KEYS / 2 + 1, $KEYS, $type2)));
$at = fault_point();
ok(defined lh_wait_until(sub { done_count(2) >= int(3 * $KEYS * $at) }, 60),
	sprintf('%.0f%% of the second stream processed', 100 * $at));
($pid) = inbox_pids();
$done = done_count(2);
ok($done < 3 * $KEYS, "the fault comes in the middle of the stream ($done of " . 3 * $KEYS . " done)");
my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @children = lh_children($pm);
note "kill -9 of postmaster $pm with $done messages done";
$node->kill9;
ok(defined lh_pids_gone(\@children, 10), 'every orphan, the inbox worker among them, exits');
bg_finish($_) for @bg;
lh_wait_until(sub { !-e "/proc/$pm" }, 30, 50);
ok($node->start(fail_ok => 1), 'restart succeeds');
ok(defined wait_inbox_worker(except => [$pid]), 'an inbox worker is running after the restart');
check_round(2, 'after kill -9 of the postmaster' . ($has_map ? ' (declared mapping)' : ''), !$has_map);
check_round(1, 'round 1 still, after kill -9 of the postmaster', 1);

$node->stop('fast');
done_testing();
