
# test/tap/005_fast_stop_hung.pl --- shutdown while requests hang
# (RELIABILITY.md C5).  The endpoint is the receiver's /hang path (reads the
# request, never answers) with a 60 s timeout and room for 40 requests at
# once, so the dispatcher has dozens of transfers that will not end by
# themselves.  SIGTERM of the dispatcher and then a fast stop of the whole
# node must each finish in well under that timeout (< 5 s).  After the
# restart, with the endpoint switched to /ok, everything is delivered.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

sub hits
{
	my ($recv) = @_;
	open my $fh, '<', $recv->{log} or return 0;
	my $n = () = <$fh>;
	return $n;
}

my $node = lh_node('fast_stop_hung', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'hang', '/hang', timeout_ms => 60000, max_concurrency => 40);
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');
lh_publish($node, 300, txns => 3, rollback => 50, tag => 'a');
ok(defined lh_wait_until(sub { hits($recv) >= 40 }, 30), '40 requests hang at the receiver');

# SIGTERM while they hang
my ($pid) = lh_dispatcher_pids($node);
my $offset = -s $node->logfile;
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->wait_for_log(
		qr/background worker "logistics_hub dispatcher" \(PID $pid\) exited with exit code 1/, $offset),
	'SIGTERM: the dispatcher exited with code 1 while its requests hung');
my $took = time - $t0;
ok($took < 5, 'SIGTERM with hung requests: exit within 5 s');
note sprintf("measured: SIGTERM of a dispatcher with 40 hung requests: exit after %.2f s", $took);

# the new dispatcher sends them again, and they hang again
my $before = hits($recv);
ok(defined lh_wait_dispatchers($node, 1, 15, except => [$pid]), 'dispatcher restarted');
ok(defined lh_wait_until(sub { hits($recv) >= $before + 40 }, 30), '40 requests hang again');
my $hung = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight'");

$t0 = time;
ok($node->stop('fast', fail_ok => 1), 'fast stop with hung requests');
$took = time - $t0;
ok($took < 5, 'fast stop with hung requests completes within 5 s (the request timeout is 60 s)');
note sprintf("measured: fast stop with 40 hung requests (%d leased) took %.2f s", $hung, $took);

# restart with no dispatcher, point the endpoint at /ok, then let it run
$node->append_conf('postgresql.conf', "logistics_hub.dispatchers = 0\n");
ok($node->start(fail_ok => 1), 'restart');
$node->safe_psql('postgres',
	"UPDATE hub.endpoints SET url = '$recv->{url}/ok?ep=hang', timeout_ms = 10000");
$node->append_conf('postgresql.conf', "logistics_hub.dispatchers = 1\n");
$node->reload;
lh_publish($node, 500, txns => 2, rollback => 50, tag => 'b');
my $r = lh_check_invariants($node, $recv, label => 'after a fast stop with hung requests',
	max_duplicates => 80);
note "duplicates after fast stop with hung requests: $r->{duplicates} (each hung request is sent again)";

$node->stop('fast');
done_testing();
