
# test/tap/009_lease_group_crash.pl --- the crash tests for lease groups
# (hub.subscribe(..., lease_group => N)): kill -9 of the dispatcher, then
# pg_ctl stop -m immediate, each in the middle of a burst into a
# subscription whose events are leased 32 to a delivery row.  A group's
# lease covers all its events while each is its own request, so a fault
# may re-send every event of the groups the dispatcher held (queued, in
# flight, or answered and waiting for the rest of their group): at most
# what one claim may hold, 8 rounds of the endpoint's connections, plus
# the record window.  Afterwards the same invariants as for single
# deliveries, per event: every committed event delivered, none from a
# rolled-back transaction, duplicates with the same webhook-id and body,
# one delivered attempt row per event, attempts numbered, the cluster
# healthy.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $N = 3000;
my $CONC = 32;
my $HELD = 8 * $CONC;    # CLAIM_ROUNDS times the endpoint's connections
my $node = lh_node('lease_group_crash', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'grp', '/delay/5', max_concurrency => $CONC, lease_group => 32);
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');

# kill -9 of the dispatcher
my $bg = lh_bg_publisher($node, 3000, tag => 'bgK');
lh_publish($node, $N, txns => 6, rollback => 200, tag => 'aK');
my $at = lh_fault_point();
ok(defined lh_wait_delivered($node, int($N * $at), 30), sprintf('%.0f%% of the burst delivered', 100 * $at));
my $groups = lh_count($node,
	"SELECT count(*) FROM hub.deliveries WHERE cardinality(batch_events) > 1");
ok($groups > 0, "the burst went into lease groups ($groups of them)");
my $delivered = lh_count($node,
	"SELECT coalesce(sum(coalesce(cardinality(batch_events), 1)), 0) FROM hub.deliveries WHERE state = 'delivered'");
ok($delivered < $N, 'the fault comes in the middle of the burst');
my ($pid) = lh_dispatcher_pids($node);
my $offset = -s $node->logfile;
kill 'KILL', $pid;
ok( $node->wait_for_log(
		qr/background worker "logistics_hub dispatcher" \(PID $pid\) was terminated by signal 9/, $offset),
	'SIGKILL: the postmaster saw the dispatcher die');
ok(defined lh_wait_dispatchers($node, 1, 30, except => [$pid]), 'SIGKILL: a new dispatcher is running');
lh_bg_finish($bg);
my $r = lh_check_invariants($node, $recv, label => 'after SIGKILL of a dispatcher with lease groups',
	max_duplicates => $HELD + LH_RECORD_WINDOW);
note "duplicates after SIGKILL with lease groups: $r->{duplicates}";

# pg_ctl stop -m immediate
$bg = lh_bg_publisher($node, 3000, tag => 'bgI');
my $before = lh_count($node, "SELECT count(*) FROM hub.outbox");
lh_publish($node, $N, txns => 6, rollback => 200, tag => 'aI');
ok(defined lh_wait_delivered($node, $before + int($N * $at), 30), 'the second burst is under way');
ok($node->stop('immediate', fail_ok => 1), 'immediate stop');
lh_bg_finish($bg);
$offset = -s $node->logfile;
ok($node->start(fail_ok => 1), 'restart succeeds');
ok($node->log_contains(qr/database system was interrupted|not properly shut down/, $offset), 'crash recovery ran');
lh_publish($node, 500, txns => 2, rollback => 50, tag => 'b');
$r = lh_check_invariants($node, $recv, label => 'after an immediate stop with lease groups',
	max_duplicates => 2 * ($HELD + LH_RECORD_WINDOW));
note "duplicates after both faults with lease groups: $r->{duplicates}";

$node->stop('fast');
done_testing();
