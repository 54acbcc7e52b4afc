
# test/tap/011_poller_kill9.pl --- kill -9 of a dispatcher in the middle of
# a poller's run, twice, between the fetch of a page and the commit of its
# records (the list API answers each page slowly, so a kill falls on a page
# in flight or one being recorded).  The postmaster reinitializes; the new
# dispatcher gives the dead one's poller lease back at start
# (hub._poll_release: the leases are 600 s long, so a lease not given back
# would hold the run far past the test's bounds) and the run resumes at its
# committed position.  Invariants, sampled while the run goes on and
# checked at the end:
#   - the position (the next page's offset) is never ahead of, nor behind,
#     the records committed for the run: it is committed with them;
#   - every record version is in hub.inbox exactly once (the page that was
#     fetched but not committed is fetched again, never stored twice).

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
my $N = 400;		# records
my $PAGE = 10;		# a page
my $node = lh_node('poller_kill9', dispatchers => 1);

# the list API
my $dir = PostgreSQL::Test::Utils::tempdir();
my $api = IPC::Run::start(
	[ 'python3', "$top/test/receiver/poll_api.py", 'serve', '--port-file', "$dir/port",
		'--log', "$dir/requests.log", '--count', $N ],
	'>', "$dir/api.out", '2>&1');
END { local $?; $api->kill_kill if $api; }
my $end = time + 10;
usleep(20_000) while !-s "$dir/port" && time < $end;
die "poll_api.py did not start" unless -s "$dir/port";
my $port = PostgreSQL::Test::Utils::slurp_file("$dir/port");
chomp $port;
sub ctl
{
	my ($json) = @_;
	my $out;
	IPC::Run::run([ 'python3', "$top/test/receiver/poll_api.py", 'control', '--port', $port, $json ],
		'>', \$out, '2>&1')
	  or die "poll_api.py control: $out";
}

# every page slow (250 ms), queued for the whole run and its re-fetches
ctl(qq({"op": "misbehave", "mode": "slow", "ms": 250, "times": 200}));
$node->safe_psql('postgres', "SELECT hub.create_endpoint('api', 'http://127.0.0.1:$port/', 'erp')");
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');
$node->safe_psql('postgres',
	"SELECT hub.create_poller('api', '/offset/rec', 'erp.rec', name => 'crash', items_path => 'items',
		pagination => 'offset', page_size => $PAGE, has_more_path => 'has_more', max_pages => 100000)");

# position and records in one snapshot: the committed offset of the run
# (NULL between runs) and the records stored
my $SAMPLE = q{SELECT coalesce(substring(next_url FROM 'offset=(\d+)'), '-') || ' ' ||
	(SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash') || ' ' || total_new
	FROM hub.pollers WHERE name = 'crash'};
my @bad;
my $samples = 0;
sub sample
{
	my $v = eval { $node->safe_psql('postgres', $SAMPLE) };
	return unless defined $v && $v =~ /^(\S+) (\d+) (\d+)$/;
	my ($pos, $stored, $total) = ($1, $2, $3);
	$samples++;
	push @bad, "position $pos, $stored records stored"
	  if $pos ne '-' && $stored < $N && $pos != $stored;
}

for my $round (1, 2)
{
	my $at = $round * $N / 3;
	ok( defined lh_wait_until(
			sub { sample(); lh_count($node, "SELECT count(*) FROM hub.inbox WHERE source = 'poll:crash'") >= $at },
			60, 50),
		"round $round: the run is a third further ($at records)");
	my ($pid) = lh_dispatcher_pids($node);
	my $offset = -s $node->logfile;
	my $leased = lh_count($node, "SELECT count(*) FROM hub.pollers WHERE lease IS NOT NULL");
	note "kill -9 of dispatcher $pid with the run leased: $leased";
	kill 'KILL', $pid;
	ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
		"round $round: the cluster reinitialized");
	ok(defined lh_wait_dispatchers($node, 1, 30, except => [$pid]), "round $round: a new dispatcher runs");
}

ok( defined lh_wait_until(
		sub {
			sample();
			lh_count($node, "SELECT count(*) FROM hub.pollers WHERE name = 'crash' AND next_url IS NULL AND lease IS NULL AND total_new > 0") == 1;
		},
		120, 50),
	'the run finished after two kills');
sample();
is(scalar(@bad), 0, "the position was never ahead of or behind the committed records ($samples samples)")
  or diag join("\n", @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ]);
is( $node->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(DISTINCT aggregate_id) || ' ' || sum(duplicate_count)
		 FROM hub.inbox WHERE source = 'poll:crash'"),
	"$N $N 0",
	'every record once in the inbox, no duplicate stored');
my $requests = () = PostgreSQL::Test::Utils::slurp_file("$dir/requests.log") =~ /offset\/rec/g;
my $pages = $N / $PAGE + 1;
cmp_ok($requests, '>=', $pages, "the API served every page ($requests requests for $pages pages)");
note "measured: $requests requests for $pages pages (a page in flight at a kill is fetched again)";
is($node->safe_psql('postgres', "SELECT count(*) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id)
		WHERE p.name = 'crash' AND r.outcome = 'failed'"), '0', 'no page recorded as failed');

$node->stop('fast');
done_testing();
