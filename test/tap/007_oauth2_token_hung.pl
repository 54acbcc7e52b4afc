
# test/tap/007_oauth2_token_hung.pl --- an OAuth2 token request that hangs
# (the receiver's /hang, with a 30 s timeout).  It is a transfer on the
# dispatcher's multi handle like any request, so the dispatcher must still
# absorb DROP DATABASE's procsignal barrier (without giving up the token
# request: the same one goes on), stop at a fast shutdown, and exit when the
# postmaster dies, each within 5 s rather than after the timeout.  Then,
# with the token endpoint fixed while the next incarnation's token request
# hangs, the fix is picked up (the hung request dropped) and everything is
# delivered.

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LhubCrash;

sub token_requests_to
{
	my ($recv, $path) = @_;
	open my $fh, '<', $recv->{log} or return 0;
	return scalar grep { m{"path":"\Q$path\E} } <$fh>;
}

sub token_requests { return token_requests_to($_[0], '/hang'); }

my $node = lh_node('oauth2_hung', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'oauth', '/oauth/api', timeout_ms => 30000);
$node->safe_psql(
	'postgres', qq{
UPDATE hub.endpoints SET auth_kind = 'oauth2', oauth2_token_url = '$recv->{url}/hang' WHERE name = 'oauth';
SELECT hub.set_endpoint_credentials('oauth', oauth2_client_id => 'id', oauth2_client_secret => 'secret');
});
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');
my @disp0 = lh_dispatcher_pids($node);
lh_publish($node, 50, txns => 1, rollback => 10, tag => 'a');
ok(defined lh_wait_until(sub { token_requests($recv) >= 1 }, 20), 'the dispatcher waits for a token');
usleep(300_000);

$node->safe_psql('postgres', 'CREATE DATABASE other');
my $t0 = time;
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE other', timeout => 40);
my $took = time - $t0;
is($ret, 0, 'DROP DATABASE while the token request hangs') or diag $err;
ok($took < 5, 'DROP DATABASE is not held up by the token request (< 5 s)');
note sprintf("measured: DROP DATABASE with a hung token request took %.2f s", $took);

# the barrier was absorbed by the loop: the token request goes on, the
# dispatcher is the same process
is(token_requests($recv), 1, 'DROP DATABASE did not cost a token request');
is(join(',', lh_dispatcher_pids($node)), join(',', @disp0), 'the dispatcher that absorbed the barrier is still running');
$t0 = time;
ok($node->stop('fast', fail_ok => 1), 'fast stop while the token request hangs');
$took = time - $t0;
ok($took < 5, 'fast stop is not held up by the token request (< 5 s)');
note sprintf("measured: fast stop with a hung token request took %.2f s", $took);

my $n = token_requests($recv);
$node->start;
ok(defined lh_wait_until(sub { token_requests($recv) > $n }, 20), 'after the restart it waits for a token again');
usleep(300_000);
my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @children = lh_children($pm);
my @disp = lh_dispatcher_pids($node);
$node->kill9;
my $gone = lh_pids_gone(\@disp, 40);
ok(defined $gone && $gone < 5, 'kill -9 of the postmaster: the dispatcher exits within 5 s');
note sprintf("measured: dispatcher in a hung token request exited %.2f s after the postmaster's death", $gone // -1);
ok(defined lh_pids_gone(\@children, 40), 'every orphan exits');
lh_wait_until(sub { !-e "/proc/$pm" }, 30, 50);

$n = token_requests($recv);
$node->start;
ok(defined lh_wait_until(sub { token_requests($recv) > $n }, 20), 'after the crash restart it waits for a token again');
usleep(300_000);
# fix the token endpoint now: the dispatcher reads the new URL within a
# second, drops the token request that hangs and asks the right one
$node->safe_psql('postgres',
	"UPDATE hub.endpoints SET oauth2_token_url = '$recv->{url}/oauth/token' WHERE name = 'oauth'");
lh_publish($node, 100, txns => 1, rollback => 10, tag => 'b');
$t0 = time;
ok(defined lh_wait_until(sub { token_requests_to($recv, '/oauth/token') >= 1 }, 10),
	'the new token URL is asked within 10 s, not after the hung request times out');
note sprintf("measured: the fixed token URL asked %.2f s after the fix", time - $t0);
# the token requests are hits of no endpoint: check on a copy without them
my $r = lh_check_invariants($node, { log => filtered($recv) },
	label => 'after hung token requests');

sub filtered
{
	my ($recv) = @_;
	lh_wait_until(
		sub {
			lh_count($node, "SELECT count(*) FROM hub.deliveries WHERE state <> 'delivered'") == 0;
		},
		60, 200);
	my $f = PostgreSQL::Test::Utils::tempdir() . '/api.log';
	open my $in, '<', $recv->{log} or die $!;
	open my $outf, '>', $f or die $!;
	print $outf grep { m{"path":"/oauth/api} } <$in>;
	close $outf;
	return $f;
}

$node->stop('fast');
done_testing();
