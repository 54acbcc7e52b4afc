
# test/tap/001_dispatcher_kill9.pl --- kill -9 of a dispatcher in the middle
# of a burst (RELIABILITY.md C2/C3).  The postmaster treats it as a crash of
# the server: every session is terminated, shared memory reinitialized and
# crash recovery run; the launcher and the dispatcher come back, the new
# dispatcher gives back the leases of the dead one, and nothing is lost.
# The blast radius is asserted too: the application session publishing at
# that moment is cut off ("crash of another server process").

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $N = 3000;
my $node = lh_node('kill9_worker', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'crash', '/delay/5', max_concurrency => 32, ordering => 'per_key');
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');

my $bg = lh_bg_publisher($node, 3000, tag => 'bg');
lh_publish($node, $N, txns => 6, rollback => 200, tag => 'a', keys => 300);
my $at = lh_fault_point();
ok(defined lh_wait_delivered($node, int($N * $at), 30), sprintf('%.0f%% of the burst delivered', 100 * $at));
my $in_flight = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight'");
my $delivered = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'delivered'");
my ($pid) = lh_dispatcher_pids($node);
my $offset = -s $node->logfile;
note "killing dispatcher $pid with $delivered delivered, $in_flight in flight";
ok($delivered < $N, 'the fault comes in the middle of the burst');
my $t_kill = time;
kill 'KILL', $pid;

ok( $node->wait_for_log(
		qr/background worker "logistics_hub dispatcher" \(PID $pid\) was terminated by signal 9/,
		$offset),
	'postmaster saw the dispatcher die of signal 9');
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
	'the cluster reinitialized (crash of a worker is a crash of the server)');
my $back = lh_wait_dispatchers($node, 1, 30, except => [$pid]);
ok(defined $back, 'a new dispatcher is running after the crash restart');
note sprintf("measured: dispatcher back %.2f s after the kill", time - $t_kill);
ok($node->log_contains(qr/database system was not properly shut down; automatic recovery in progress/, $offset),
	'crash recovery ran');

my $err = lh_bg_finish($bg);
like($err, qr/terminating connection because of crash of another server process|server closed the connection unexpectedly/,
	'the publishing session was cut off by the reset (blast radius)');

# more events after the restart
lh_publish($node, 1000, txns => 2, rollback => 50, tag => 'b');
my $r = lh_check_invariants($node, $recv, label => 'after kill -9 of a dispatcher', max_duplicates => 32);
ok($r->{expired} > 0, 'leases of the killed dispatcher were given back as expired attempts')
  if $in_flight > 0;
note "duplicates after dispatcher kill -9: $r->{duplicates} (in flight at the kill: $in_flight)";

$node->stop('fast');
done_testing();
