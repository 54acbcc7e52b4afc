
# test/tap/003_immediate_stop.pl --- pg_ctl stop -m immediate in the middle
# of a burst (RELIABILITY.md C6): every process is sent SIGQUIT, nothing is
# written at shutdown, the next start runs crash recovery; nothing is lost.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $N = 3000;
my $node = lh_node('immediate_stop', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'crash', '/delay/5', max_concurrency => 32);
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');

my $bg = lh_bg_publisher($node, 3000, tag => 'bg');
lh_publish($node, $N, txns => 6, rollback => 200, tag => 'a');
my $at = lh_fault_point();
ok(defined lh_wait_delivered($node, int($N * $at), 30), sprintf('%.0f%% of the burst delivered', 100 * $at));
my $in_flight = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight'");
my $delivered = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'delivered'");
ok($delivered < $N, 'the fault comes in the middle of the burst');

my $t0 = time;
ok($node->stop('immediate', fail_ok => 1), 'immediate stop');
my $took = time - $t0;
ok($took < 5, 'immediate stop takes less than 5 s');
note sprintf("measured: immediate stop with %d in flight took %.2f s", $in_flight, $took);
lh_bg_finish($bg);

my $offset = -s $node->logfile;
ok($node->start(fail_ok => 1), 'restart succeeds');
ok($node->log_contains(qr/database system was interrupted|not properly shut down/, $offset),
	'crash recovery ran');

lh_publish($node, 1000, txns => 2, rollback => 50, tag => 'b');
my $r = lh_check_invariants($node, $recv, label => 'after an immediate stop', max_duplicates => 32 + LH_RECORD_WINDOW);
note "duplicates after immediate stop: $r->{duplicates} (in flight at the stop: $in_flight)";

$node->stop('fast');
done_testing();
