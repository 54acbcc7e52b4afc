
# test/tap/006_drop_not_blocked.pl --- the workers never stand in the way of
# DROP DATABASE or DROP EXTENSION, even with requests hanging
# (RELIABILITY.md C13).  DROP DATABASE of another database waits for a
# procsignal barrier that every process, the dispatcher in its curl loop
# included, must absorb; DROP EXTENSION needs the hub's tables, which the
# dispatcher never keeps locked between its short transactions.  Each is
# bounded (< 5 s) while 30 requests hang; afterwards the hung requests time
# out, are retried against /ok and everything is delivered; after DROP
# EXTENSION the dispatcher leaves quietly and CREATE EXTENSION brings it
# back.

use strict;
use warnings;
use IPC::Run;
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

sub timed
{
	my ($node, $db, $sql) = @_;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql($db, $sql, timeout => 30);
	return ($ret, time - $t0, $err);
}

my $node = lh_node('drop_not_blocked', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'hang', '/hang', timeout_ms => 6000, max_concurrency => 30);
# 30 timeouts in a row would open the circuit for 30 s: not what is tested
$node->safe_psql('postgres', "UPDATE hub.endpoints SET circuit_failure_threshold = 1000");
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');
lh_publish($node, 200, txns => 2, rollback => 20, tag => 'a');
ok(defined lh_wait_until(sub { hits($recv) >= 30 }, 30), '30 requests hang at the receiver');
# what is sent from now on goes to /ok; the 30 in flight hang on until their
# 6 s timeout, then are retried there
$node->safe_psql('postgres', "UPDATE hub.endpoints SET url = '$recv->{url}/ok?ep=hang'");

# DROP DATABASE ... WITH (FORCE) of a database with a session in it
$node->safe_psql('postgres', 'CREATE DATABASE other1');
my ($sout, $serr) = ('', '');
my $sess = IPC::Run::start(
	[ 'psql', '-XAt', '-d', $node->connstr('other1'), '-c', 'SELECT pg_sleep(60)' ],
	'>', \$sout, '2>', \$serr, IPC::Run::timeout(90));
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = 'other1'");
my ($ret, $took, $err) = timed($node, 'postgres', 'DROP DATABASE other1 WITH (FORCE)');
is($ret, 0, 'DROP DATABASE WITH (FORCE) while requests hang') or diag $err;
ok($took < 5, 'DROP DATABASE WITH (FORCE) within 5 s');
note sprintf("measured: DROP DATABASE WITH (FORCE) with 30 hung requests took %.2f s", $took);
eval { $sess->finish };

# plain DROP DATABASE of an idle one
$node->safe_psql('postgres', 'CREATE DATABASE other2');
($ret, $took, $err) = timed($node, 'postgres', 'DROP DATABASE other2');
is($ret, 0, 'DROP DATABASE while requests hang') or diag $err;
ok($took < 5, 'DROP DATABASE within 5 s');
note sprintf("measured: DROP DATABASE with 30 hung requests took %.2f s", $took);
is(scalar(lh_dispatcher_pids($node)), 1, 'the dispatcher is still there');

# the hung requests time out (6 s) and are retried against /ok
lh_publish($node, 500, txns => 2, rollback => 20, tag => 'b');
my $r = lh_check_invariants($node, $recv, label => 'after DROP DATABASE with hung requests',
	max_duplicates => 30);
is(lh_count($node, "SELECT count(*) FROM hub.attempts WHERE outcome = 'retry' AND error ~* 'timeout|timed out'"),
	30, 'the 30 hung requests were recorded as timed out and retried');

# DROP EXTENSION while requests hang
$node->safe_psql('postgres',
	"UPDATE hub.endpoints SET url = '$recv->{url}/hang?ep=hang', timeout_ms = 60000");
my $before = hits($recv);
lh_publish($node, 100, txns => 1, rollback => 0, tag => 'c');
ok(defined lh_wait_until(sub { hits($recv) >= $before + 30 }, 30), '30 requests hang again');
my ($pid) = lh_dispatcher_pids($node);
($ret, $took, $err) = timed($node, 'postgres', 'DROP EXTENSION logistics_hub');
is($ret, 0, 'DROP EXTENSION while requests hang') or diag $err;
ok($took < 5, 'DROP EXTENSION within 5 s');
note sprintf("measured: DROP EXTENSION with 30 hung requests took %.2f s", $took);
ok(defined lh_wait_until(sub { scalar(lh_dispatcher_pids($node)) == 0 }, 10),
	'the dispatcher leaves once the extension is gone');

my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE EXTENSION logistics_hub');
ok(defined lh_wait_dispatchers($node, 1, 20, except => [$pid]),
	'CREATE EXTENSION again: a dispatcher is back');
ok(!$node->log_contains(qr/reinitializing|terminated by signal/, 0), 'no crash restart at any point');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the node is healthy');

$node->stop('fast');
done_testing();
