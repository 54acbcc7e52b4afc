
# test/tap/008_scale_down.pl --- logistics_hub.dispatchers lowered from 2 to
# 1 in the middle of a burst: the launcher stops dispatcher 1 (SIGTERM) with
# hundreds of deliveries leased; no dispatcher of that name starts again to
# give them back, so dispatcher 0 must, or they would wait for their whole
# lease (600 s here).  Then raised back to 2: dispatcher 1 returns.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $N = 600;
my $node = lh_node('scale_down', dispatchers => 2);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'even', '/delay/20', max_concurrency => 8);
lh_endpoint($node, $recv, 'odd', '/delay/20', max_concurrency => 8);
ok(defined lh_wait_dispatchers($node, 2, 20), 'two dispatchers running');
lh_publish($node, $N, txns => 2, rollback => 50, tag => 'a');
my $at = lh_fault_point();
ok(defined lh_wait_delivered($node, int(2 * $N * $at / 2), 30),
	sprintf('%.0f%% of the deliveries done', 100 * $at / 2));
my $leased1 = lh_count($node,
	"SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight' AND leased_by = 'dispatcher 1'");
note "dispatcher 1 holds $leased1 leases";

$node->append_conf('postgresql.conf', "logistics_hub.dispatchers = 1\n");
$node->reload;
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher 1 is stopped');
my $t0 = time;
my $freed = lh_wait_until(
	sub {
		lh_count($node,
			"SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight' AND leased_by = 'dispatcher 1'"
		) == 0;
	},
	20, 100);
ok(defined $freed, "the retired dispatcher's leases are given back at once, not after the lease");
note sprintf("measured: %d leases of the retired dispatcher given back %.2f s after it stopped",
	$leased1, $freed // -1);
lh_publish($node, 200, txns => 1, rollback => 20, tag => 'b');
lh_check_invariants($node, $recv, label => 'after lowering the number of dispatchers',
	max_duplicates => 8 + LH_RECORD_WINDOW);

$node->append_conf('postgresql.conf', "logistics_hub.dispatchers = 2\n");
$node->reload;
ok(defined lh_wait_dispatchers($node, 2, 20), 'raised again: two dispatchers');
lh_publish($node, 200, txns => 1, rollback => 20, tag => 'c');
lh_check_invariants($node, $recv, label => 'after raising it again', dispatchers => 2,
	max_duplicates => 8 + LH_RECORD_WINDOW);

# A launcher restarted after SIGTERM adopts the running dispatchers by
# their slots, without a handle to stop them: lowering the number again
# must still retire dispatcher 1.
my $launcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub launcher'");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
ok( defined lh_wait_until(
		sub {
			my $p = $node->safe_psql('postgres',
				"SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub launcher'");
			return $p ne '' && $p != $launcher;
		},
		20, 100),
	'the launcher is restarted and adopts both dispatchers');
is(scalar(lh_dispatcher_pids($node)), 2, 'still two dispatchers');
lh_publish($node, 600, txns => 1, rollback => 20, tag => 'd');
lh_wait_delivered($node, 2 * (600 + 200 + 200) + 300, 30);
$node->append_conf('postgresql.conf', "logistics_hub.dispatchers = 1\n");
$node->reload;
ok(defined lh_wait_dispatchers($node, 1, 20), 'lowered after the launcher restart: one dispatcher');
lh_check_invariants($node, $recv, label => 'after lowering it under an adopting launcher',
	max_duplicates => 2 * (8 + LH_RECORD_WINDOW));

$node->stop('fast');
done_testing();
