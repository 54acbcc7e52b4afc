
# test/tap/001_dispatcher_kill9.pl --- kill -9, then kill -SEGV, of a
# dispatcher in the middle of a burst (RELIABILITY.md C2, C3; SIGSEGV
# stands for a bug in our C code or in libcurl).  The postmaster treats
# either as a crash of the server: every session is terminated, shared
# memory reinitialized and crash recovery run; the launcher and the
# dispatcher come back, the new dispatcher gives back the leases of the
# dead one, and nothing is lost.  The blast radius is asserted too: the
# application session publishing at that moment is cut off ("crash of
# another server process").

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $N = 2000;
my $node = lh_node('kill9_worker', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'crash', '/delay/5', max_concurrency => 32, ordering => 'per_key');
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');

my @segv;
my $done = 0;
for my $sig ('KILL', 'SEGV')
{
	my $signo = $sig eq 'KILL' ? 9 : 11;
	my $bg = lh_bg_publisher($node, 3000, tag => "bg$sig");
	lh_publish($node, $N, txns => 6, rollback => 200, tag => "a$sig", keys => 300);
	my $at = lh_fault_point();
	ok(defined lh_wait_delivered($node, $done + int($N * $at), 30),
		sprintf('%.0f%% of the burst delivered', 100 * $at));
	my $in_flight = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight'");
	my $delivered = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'delivered'");
	my $expired0 = lh_count($node, "SELECT count(*) FROM hub.attempts WHERE outcome = 'expired'");
	my ($pid) = lh_dispatcher_pids($node);
	my $offset = -s $node->logfile;
	note "SIG$sig to dispatcher $pid with $delivered delivered, $in_flight in flight";
	ok($delivered < $done + $N, "SIG$sig: the fault comes in the middle of the burst");
	push @segv, $pid if $sig eq 'SEGV';
	my $t_kill = time;
	kill $sig, $pid;

	ok( $node->wait_for_log(
			qr/background worker "logistics_hub dispatcher" \(PID $pid\) was terminated by signal $signo/,
			$offset),
		"SIG$sig: the postmaster saw the dispatcher die of signal $signo");
	ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
		"SIG$sig: the cluster reinitialized (a crash of a worker is a crash of the server)");
	ok(defined lh_wait_dispatchers($node, 1, 30, except => [$pid]),
		"SIG$sig: a new dispatcher is running after the crash restart");
	note sprintf("measured: dispatcher back %.2f s after SIG%s", time - $t_kill, $sig);
	ok( $node->log_contains(
			qr/database system was not properly shut down; automatic recovery in progress/, $offset),
		"SIG$sig: crash recovery ran");

	my $err = lh_bg_finish($bg);
	like(
		$err,
		qr/terminating connection because of crash of another server process|server closed the connection unexpectedly/,
		"SIG$sig: the publishing session was cut off by the reset (blast radius)");

	# more events after the restart
	lh_publish($node, 500, txns => 2, rollback => 50, tag => "b$sig");
	my $r = lh_check_invariants($node, $recv,
		label => "after SIG$sig of a dispatcher",
		max_duplicates => (32 + LH_RECORD_WINDOW) * ($sig eq 'KILL' ? 1 : 2),
		signal11 => \@segv);
	ok(lh_count($node, "SELECT count(*) FROM hub.attempts WHERE outcome = 'expired'") > $expired0,
		"SIG$sig: leases of the dead dispatcher were given back as expired attempts")
	  if $in_flight > 0;
	note "measured: duplicates after SIG$sig of a dispatcher: $r->{duplicates} in all (in flight at the kill: $in_flight)";
	$done = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'delivered'");
}

$node->stop('fast');
done_testing();
