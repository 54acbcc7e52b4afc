
# test/tap/000_checker.pl --- the invariant checker can fail.  A clean burst
# passes I1-I5; then the checker is fed histories broken on purpose (a
# receiver log with a phantom, a rolled-back body, a duplicate with another
# body, too many hits, a missing hit; an extra delivered attempt row; an
# undelivered event; a missing dispatcher; a PANIC in the server log) and
# must flag exactly the invariant each one breaks.

use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LhubCrash;

my $node = lh_node('checker', dispatchers => 1);
my $recv = lh_receiver();
lh_endpoint($node, $recv, 'crash', '/ok', ordering => 'per_key');
ok(defined lh_wait_dispatchers($node, 1, 20), 'dispatcher running');
lh_publish($node, 300, txns => 3, rollback => 30, tag => 'a', keys => 20);
lh_check_invariants($node, $recv, label => 'on a clean run');

# verdicts of the checks whose names start with one of the invariants
sub verdicts
{
	my ($r, %opt) = @_;
	my (undef, $checks) = lh_invariants($node, $r, label => 'x', wait => 2, %opt);
	my %v;
	for my $c (@$checks)
	{
		my ($i) = $c->[0] =~ /^(I\d)/;
		$v{$i} = 1 unless exists $v{$i};
		$v{$i} &&= $c->[1];
	}
	return join ' ', map { "$_=" . ($v{$_} ? 'pass' : 'FAIL') } sort keys %v;
}

my @lines = split /\n/, slurp_file($recv->{log});
my $dir = PostgreSQL::Test::Utils::tempdir();
my $n = 0;

# a receiver whose log is the real one with some lines changed
sub broken_log
{
	my ($edit) = @_;
	my @l = $edit->(map { decode_json($_) } @lines);
	my $f = "$dir/log" . $n++;
	open my $fh, '>', $f or die $!;
	print $fh encode_json($_), "\n" for @l;
	close $fh;
	return { log => $f };
}

sub with_body
{
	my ($e, $body) = @_;
	my %c = %$e;
	$c{headers} = { %{ $e->{headers} } };
	$c{body} = $body;
	$c{sha256} = 'f' x 64;
	return \%c;
}

is(verdicts({ log => $recv->{log} }), 'I1=pass I2=pass I3=pass I4=pass I5=pass I6=pass', 'clean log: all pass');

my $phantom_id = '00000000-0000-8000-8000-000000000000';
is( verdicts(
		broken_log(
			sub {
				my %c = %{ $_[0] };
				$c{headers} = { %{ $_[0]{headers} }, 'webhook-id' => $phantom_id };
				$c{body} = qq({"id": "$phantom_id"});
				return (@_, \%c);
			})),
	'I1=pass I2=FAIL I3=pass I4=pass I5=pass I6=pass',
	'a phantom webhook-id breaks I2');
is( verdicts(
		broken_log(
			sub {
				my $id = $_[1]{headers}{'webhook-id'};
				my $c = with_body($_[1], qq({"id": "$id", "data": {"rolled_back": true}}));
				$c->{sha256} = $_[1]{sha256};
				return (@_[ 0 .. 1 ], $c, @_[ 2 .. $#_ ]);
			})),
	'I1=pass I2=FAIL I3=pass I4=FAIL I5=pass I6=pass',
	'a rolled-back body breaks I2 (and, as a second hit on one lease, I4)');
is( verdicts(
		broken_log(
			sub {
				my $id = $_[2]{headers}{'webhook-id'};
				return (@_[ 0 .. 2 ], with_body($_[2], qq({"id": "$id", "other": 1})), @_[ 3 .. $#_ ]);
			})),
	'I1=pass I2=pass I3=FAIL I4=FAIL I5=pass I6=pass',
	'a duplicate with another body breaks I3');
is(verdicts(broken_log(sub { return (@_[ 0 .. 3 ], $_[3], $_[3], @_[ 4 .. $#_ ]) })),
	'I1=pass I2=pass I3=pass I4=FAIL I5=pass I6=pass',
	'more hits than leases break I4');
is(verdicts(broken_log(sub { return @_[ 1 .. $#_ ] })),
	'I1=pass I2=FAIL I3=pass I4=FAIL I5=pass I6=pass',
	'a delivered event the receiver never got breaks I2 and I4');

# two events of one aggregate swapped: the later one arrives first
is( verdicts(
		broken_log(
			sub {
				my @l = @_;
				my %first;
				for my $i (0 .. $#l)
				{
					my $agg = decode_json($l[$i]{body})->{aggregate_id};
					if (defined $first{$agg})
					{
						@l[ $first{$agg}, $i ] = @l[ $i, $first{$agg} ];
						last;
					}
					$first{$agg} = $i;
				}
				return @l;
			})),
	'I1=pass I2=pass I3=pass I4=pass I5=pass I6=FAIL',
	'a later event of a key before an earlier one breaks I6');
is( verdicts(broken_log(sub { return (@_, $_[0]) })),
	'I1=pass I2=pass I3=pass I4=FAIL I5=pass I6=FAIL',
	'a duplicate of an event after later events of its key breaks I6 (and, a hit beyond its leases, I4)');

# an undelivered event: a paused endpoint
$node->safe_psql('postgres', "SELECT hub.pause_endpoint('crash', 'checker self-test')");
lh_publish($node, 1, txns => 1, rollback => 0, tag => 'paused');
like(verdicts($recv), qr/^I1=FAIL /, 'an event left pending breaks I1');
$node->safe_psql('postgres', "SELECT hub.resume_endpoint('crash', 'checker self-test')");
is(verdicts($recv, wait => 30), 'I1=pass I2=pass I3=pass I4=pass I5=pass I6=pass', 'delivered once resumed');

like(verdicts($recv, dispatchers => 2), qr/I5=FAIL I6=pass$/, 'a missing dispatcher breaks I5');

$node->safe_psql('postgres',
	"INSERT INTO hub.attempts (delivery_id, attempt, outcome) SELECT min(delivery_id), 1, 'delivered' FROM hub.deliveries");
is(verdicts($recv), 'I1=pass I2=pass I3=pass I4=FAIL I5=pass I6=pass', 'a second delivered attempt row breaks I4');

open my $fh, '>>', $node->logfile or die $!;
print $fh "2026-01-01 00:00:00 UTC [1] PANIC:  checker self-test\n";
close $fh;
like(verdicts($recv), qr/I5=FAIL I6=pass$/, 'a PANIC in the log breaks I5');

$node->stop('fast');
done_testing();
