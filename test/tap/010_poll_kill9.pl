
# test/tap/010_poll_kill9.pl --- kill -9 of the dispatcher in the middle of
# a poller's run (issue 18): between a page's fetch and the commit that
# records it, or while the page is on the wire.  The cluster restarts, the
# new dispatcher gives the dead one's poller lease back (hub._poll_release)
# and the run resumes at its committed position.  Invariants, checked in
# every snapshot sampled during the run, right after the crash and at the
# end:
#   P1  the position is never ahead of the records: the committed next URL's
#       offset equals the number of the poller's messages (a page's records
#       and the position move in one transaction);
#   P2  every record version lands exactly once (no message twice, none
#       missing), whatever was re-fetched after the crash;
#   P3  the page cut by the crash was fetched again (the API's log), and the
#       poller's audit says nothing was lost (records counted = messages).

use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

my $top = $ENV{LH_TOP} || File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my $N = 1500;        # records
my $PAGE = 25;       # records a page: 60 pages

my $node = lh_node('poll_kill9', dispatchers => 1);
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');

# the list API, every page slowed down a little so that the run lasts
my $dir = PostgreSQL::Test::Utils::tempdir();
my $api = IPC::Run::start(
	[ 'python3', "$top/test/receiver/poll_api.py", 'serve', '--port-file', "$dir/port", '--log', "$dir/log",
		'--count', $N ],
	'>', "$dir/out", '2>&1');
END { local $?; $api->kill_kill if $api; }    # (keep the exit status)
my $end = time + 10;
usleep(20_000) while !-s "$dir/port" && time < $end;
my $port = PostgreSQL::Test::Utils::slurp_file("$dir/port");
chomp $port;
my $out;
IPC::Run::run([ 'python3', "$top/test/receiver/poll_api.py", 'control', '--port', $port,
	'{"op": "misbehave", "mode": "slow", "ms": 60, "times": 400}' ], '>', \$out) or die "control: $out";

$node->safe_psql('postgres', qq{
SELECT hub.create_endpoint('api', 'http://127.0.0.1:$port/', 'erp');
SELECT hub.create_poller('api', '/link/orders', 'erp.order', name => 'crash', pagination => 'link_header',
	limit_param => 'limit', page_size => $PAGE, every => '1 hour');
});

# P1 in one snapshot: the committed offset (after=K in the next URL; 0 for a
# run's first page) against the poller's messages
my $p1 = q{
SELECT coalesce((substring(p.next_url FROM 'after=([0-9]+)'))::int,
				CASE WHEN p.next_url IS NULL AND p.last_success_at IS NOT NULL THEN (SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash') ELSE 0 END)
	   || ' ' || (SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash')
FROM hub.pollers p WHERE p.name = 'crash'};
sub p1_holds
{
	my ($label) = @_;
	my $v = eval { $node->safe_psql('postgres', $p1) } // return 1;    # (restarting)
	my ($pos, $n) = split / /, $v;
	return 1 if $pos == $n;
	fail("P1 $label: position $pos, messages $n");
	return 0;
}

my $at = lh_fault_point();
my $target = int($N * $at);
my $bad = 0;
lh_wait_until(sub { $bad += !p1_holds('during the run'); lh_count($node, "SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash'") >= $target }, 60, 20)
  // die "the run did not reach $target records";
my ($pid) = lh_dispatcher_pids($node);
my $before = lh_count($node, "SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash'");
my $offset = -s $node->logfile;
note sprintf('SIGKILL to dispatcher %d at %d of %d records (fault point %.2f)', $pid, $before, $N, $at);
kill 'KILL', $pid;
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
	'the cluster reinitialized after the kill');
ok(defined lh_wait_dispatchers($node, 1, 30, except => [$pid]), 'a new dispatcher is running');
$bad += !p1_holds('right after the crash');
ok(lh_count($node, "SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash'") < $N,
	'the kill came in the middle of the run');

ok( defined lh_wait_until(
		sub {
			$bad += !p1_holds('after the restart');
			lh_count($node, "SELECT count(*) FROM hub.pollers WHERE name = 'crash' AND last_success_at IS NOT NULL") == 1;
		},
		60, 50),
	'the run resumed and ended (the dead dispatcher\'s lease was given back)');
is($bad, 0, 'P1: in every snapshot sampled, the position was never ahead of the records');
is( $node->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(DISTINCT message_id) || ' ' || count(DISTINCT aggregate_id) FROM hub.inbox WHERE source = 'poll:crash'"),
	"$N $N $N", 'P2: every record version exactly once');
is($node->safe_psql('postgres', "SELECT min(aggregate_id::int) || '-' || max(aggregate_id::int) FROM hub.inbox WHERE source = 'poll:crash'"),
	"1-$N", 'P2: none missing');
my $requests = () = PostgreSQL::Test::Utils::slurp_file("$dir/log") =~ /link\/orders/g;
cmp_ok($requests, '>=', $N / $PAGE, "P3: the API got $requests page requests for " . ($N / $PAGE) . ' pages (the cut one again)');
is( $node->safe_psql('postgres',
		"SELECT sum(new_records) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'crash'"),
	$N, 'P3: the audit counts every record as new once');
ok(!$node->log_contains(qr/TRAP:|PANIC/, 0), 'no assertion failure or PANIC');

$node->stop('fast');
done_testing();
