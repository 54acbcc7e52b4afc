
# test/tap/002_postmaster_kill9.pl --- kill -9 of the postmaster in the
# middle of a burst, two dispatchers each with requests in flight
# (RELIABILITY.md C1).  Every orphan (the dispatchers inside their curl
# loop, the launcher, backends, auxiliary processes) must notice the
# postmaster's death and exit within 5 s, so that the next start finds no
# shared memory still in use; after it, nothing is lost.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $N = 2000;
my $node = lh_node('kill9_postmaster', dispatchers => 2);
my $recv = lh_receiver();
# endpoint ids 1 and 2: one in each dispatcher's shard
lh_endpoint($node, $recv, 'even', '/delay/5', max_concurrency => 24);
lh_endpoint($node, $recv, 'odd', '/delay/5', max_concurrency => 24, ordering => 'per_key');
ok(defined lh_wait_dispatchers($node, 2, 20), 'two dispatchers running');

my $bg = lh_bg_publisher($node, 3000, tag => 'bg');
lh_publish($node, $N, txns => 4, rollback => 200, tag => 'a', keys => 200);
my $at = lh_fault_point();
ok(defined lh_wait_delivered($node, int(2 * $N * $at), 30), sprintf('%.0f%% of the deliveries done', 100 * $at));

my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @children = lh_children($pm);
my @disp = lh_dispatcher_pids($node);
my $in_flight = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'in_flight'");
my $delivered = lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state = 'delivered'");
note "killing postmaster $pm (children @children; dispatchers @disp) with $delivered delivered, $in_flight in flight";
ok($delivered < 2 * $N, 'the fault comes in the middle of the burst');
is(scalar(grep { my $d = $_; grep { $_ == $d } @children } @disp), 2, 'both dispatchers are children of the postmaster');

$node->kill9;
my $gone = lh_pids_gone(\@children, 10);
ok(defined $gone && $gone < 5, 'every orphan exits within 5 s of the postmaster\'s death');
note sprintf("measured: orphans exited %.2f s after kill -9 of the postmaster", $gone // -1);
my $disp_gone = lh_pids_gone(\@disp, 1);
ok(defined $disp_gone, 'the dispatchers are among them');

my $err = lh_bg_finish($bg);
like($err, qr/server closed the connection unexpectedly|terminating connection|connection to server was lost/,
	'the publishing session lost its server');

# The killed postmaster stays a zombie until its parent (here PID 1 of the
# container) reaps it, and a zombie still "exists" for the lock file check
# of the next postmaster; wait for it to be reaped (not a property of the
# extension, so only bounded, not asserted tight).
my $reaped = lh_wait_until(sub { !-e "/proc/$pm" }, 30, 50);
note sprintf("measured: killed postmaster reaped after %.2f s", $reaped // -1);
my $offset = -s $node->logfile;
ok($node->start(fail_ok => 1), 'restart succeeds');
ok(!$node->log_contains(qr/pre-existing shared memory block/, $offset),
	'no pre-existing shared memory block in use');
ok($node->log_contains(qr/database system was interrupted|not properly shut down/, $offset),
	'crash recovery ran');

lh_publish($node, 500, txns => 2, rollback => 50, tag => 'b');
my $r = lh_check_invariants($node, $recv, label => 'after kill -9 of the postmaster',
	dispatchers => 2, max_duplicates => 48 + 2 * LH_RECORD_WINDOW);
note "duplicates after postmaster kill -9: $r->{duplicates} (in flight at the kill: $in_flight)";

$node->stop('fast');
done_testing();
