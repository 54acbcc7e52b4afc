
# test/tap/LhubCrash.pm --- shared pieces of the crash, restart and shutdown
# tests (test/tap/*.pl): a preloaded node with restart_after_crash on, the
# loopback receiver, endpoints, bursts of events (with rolled-back
# transactions whose events must never arrive), a background publisher that
# a crash cuts off mid-transaction, and the invariant checker I1-I5 run
# after every fault.
#
# The checker compares three histories: the outbox (what committed), the
# deliveries and attempts tables (what the hub says it did), and the
# receiver's request log (what actually reached the receiver; it writes a
# line for every request before answering it, so an answered request is
# always logged).  It is meant for a quiescent node: every burst drained,
# nothing in flight.
#
# test/tap/LhubCrash.pm

package LhubCrash;

use strict;
use warnings;

use Exporter 'import';
use Fcntl qw(O_WRONLY O_CREAT O_TRUNC);
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(lh_node lh_receiver lh_endpoint lh_publish lh_bg_publisher
  lh_bg_finish lh_fault_point lh_dispatcher_pids lh_children lh_wait_dispatchers lh_count
  lh_wait_until lh_wait_delivered lh_pids_gone lh_check_invariants lh_invariants
  LH_RECORD_WINDOW);

# A dispatcher records received answers in batches (workers/push_record.c:
# RECORD_BATCH = max(64, max_in_flight) results, or 10 ms): a fault can
# therefore re-send, besides what was in flight, the answers received but
# not recorded yet, fewer than two record batches at max_in_flight = 64.
use constant LH_RECORD_WINDOW => 128;

my $top = $ENV{LH_TOP}
  || File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my @receivers;

END
{
	local $?;    # keep the test's exit status
	$_->{handle}->kill_kill for grep { $_->{handle} } @receivers;
}

# lh_node NAME, dispatchers => N, inbox_workers => N (0), conf => '...' ---
# a started node with the
# library preloaded, restart_after_crash on and the extension created in
# the database the workers serve (postgres).  Leases are long (600 s), so a
# lease that is not given back by the restarted dispatcher would hold its
# delivery far past the checker's bound: draining in time proves the give
# back.
sub lh_node
{
	my ($name, %opt) = @_;
	my $n = $opt{dispatchers} // 1;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;

	# the key that seals endpoint secrets: 32 random bytes, mode 0600, owned
	# by the node's user, outside the data directory
	my $key = $node->basedir . '/secret.key';
	open(my $rnd, '<:raw', '/dev/urandom') or die "/dev/urandom: $!";
	read($rnd, my $bytes, 32) == 32 or die "short read from /dev/urandom";
	close($rnd);
	sysopen(my $kf, $key, O_WRONLY | O_CREAT | O_TRUNC, 0600) or die "$key: $!";
	binmode($kf);
	print $kf $bytes;
	close($kf);
	chmod(0600, $key);

	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'logistics_hub'
logistics_hub.secret_key_file = '$key'
restart_after_crash = on
max_connections = 40
max_worker_processes = 16
log_statement = 'ddl'
lc_messages = 'C'
logistics_hub.dispatchers = 0
logistics_hub.inbox_workers = 0
logistics_hub.egress_allow = '127.0.0.1'
logistics_hub.lease = '600s'
logistics_hub.max_in_flight = 64
logistics_hub.poll_interval = '200ms'
logistics_hub.retention_interval = 0
} . ($opt{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION logistics_hub');
	# dispatchers only now: one started before the extension existed would
	# leave at once and come back only after the launcher's 5 s pause
	$node->append_conf('postgresql.conf',
		"logistics_hub.dispatchers = $n\nlogistics_hub.inbox_workers = " . ($opt{inbox_workers} // 0) . "\n");
	$node->reload;
	return $node;
}

# lh_receiver --- start test/receiver/receiver.py on a free loopback port;
# returns { url, port, log, handle }.  Stopped at exit.
sub lh_receiver
{
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $pf = "$dir/receiver.port";
	my $r = { log => "$dir/receiver.log" };

	$r->{handle} = IPC::Run::start(
		[
			'python3', "$top/test/receiver/receiver.py",
			'serve', '--port-file', $pf, '--log', $r->{log}
		],
		'>', "$dir/receiver.out", '2>&1');
	push @receivers, $r;
	my $end = time + 10;
	usleep(20_000) while !-s $pf && time < $end;
	die "receiver did not start" unless -s $pf;
	$r->{port} = PostgreSQL::Test::Utils::slurp_file($pf);
	chomp $r->{port};
	$r->{url} = "http://127.0.0.1:$r->{port}";
	return $r;
}

# lh_endpoint NODE, RECV, NAME, PATH, timeout_ms => .., max_concurrency => ..,
# ordering => none|per_key, lease_group => N --- an endpoint on the
# receiver, subscribed to order.* (ordering none and no lease group unless
# asked).
# The URL carries ?ep=NAME so the checker can tell endpoints apart in the
# receiver's log.
sub lh_endpoint
{
	my ($node, $recv, $name, $path, %opt) = @_;
	my $timeout = $opt{timeout_ms} // 10000;
	my $conc = $opt{max_concurrency} // 32;
	my $ordering = $opt{ordering} // 'none';
	my $group = $opt{lease_group} // 1;

	$node->safe_psql(
		'postgres', qq{
SELECT hub.create_endpoint('$name', '$recv->{url}$path?ep=$name',
	timeout_ms => $timeout, max_concurrency => $conc);
SELECT hub.subscribe('$name', 'order.*', ordering => '$ordering', retry_base => '100 ms',
	retry_max => '1 s', max_attempts => 50, lease_group => $group);
});
	return;
}

# lh_publish NODE, N, txns => K, rollback => M, tag => T, keys => A ---
# commit N order.created events in K transactions (plain INSERT for the
# first half, hub.publish for the rest), and roll back M more marked
# rolled_back.  Aggregate ids are distinct, or A of them shared round robin
# (for per_key ordering).
sub lh_publish
{
	my ($node, $n, %opt) = @_;
	my $k = $opt{txns} // 5;
	my $m = $opt{rollback} // 100;
	my $tag = $opt{tag} // 'burst';
	my $key = defined $opt{keys} ? "'$tag-' || (g % $opt{keys})" : "'$tag-' || g";
	my $sql = '';
	my $per = int(($n + $k - 1) / $k);

	for (my $i = 0; $i < $k; $i++)
	{
		my ($a, $b) = ($i * $per + 1, ($i + 1) * $per);
		$b = $n if $b > $n;
		last if $a > $b;
		my $payload =
		  "jsonb_build_object('order_id', '$tag-' || g, 'n', g, 'src', '$tag')";
		if ($i < $k / 2)
		{
			$sql .= "BEGIN; INSERT INTO hub.outbox (event_type, aggregate_id, payload) "
			  . "SELECT 'order.created', $key, $payload FROM generate_series($a, $b) g; COMMIT;\n";
		}
		else
		{
			$sql .= "BEGIN; SELECT count(hub.publish('order.created', $key, $payload)) "
			  . "FROM generate_series($a, $b) g; COMMIT;\n";
		}
	}
	$sql .=
	    "BEGIN; SELECT count(hub.publish('order.created', '$tag-rb-' || g, "
	  . "jsonb_build_object('order_id', 'rb-' || g, 'rolled_back', true))) "
	  . "FROM generate_series(1, $m) g; ROLLBACK;\n"
	  if $m > 0;
	$node->safe_psql('postgres', $sql);
	return;
}

# lh_bg_publisher NODE, N, tag => T --- a session publishing N events, one
# small transaction each (every 7th rolled back instead), 5 ms apart: a
# crash cuts it off in the middle of a transaction.  Returns a handle for
# lh_bg_finish.
sub lh_bg_publisher
{
	my ($node, $n, %opt) = @_;
	my $tag = $opt{tag} // 'bg';
	my $bg = { out => '', err => '' };
	my $sql = qq{
DO \$\$
BEGIN
	FOR i IN 1..$n LOOP
		IF i % 7 = 0 THEN
			PERFORM hub.publish('order.created', '$tag-rb-' || i,
				jsonb_build_object('order_id', '$tag-rb-' || i, 'rolled_back', true));
			ROLLBACK;
		ELSE
			PERFORM hub.publish('order.created', '$tag-' || i,
				jsonb_build_object('order_id', '$tag-' || i, 'src', '$tag'));
			COMMIT;
		END IF;
		PERFORM pg_sleep(0.005);
	END LOOP;
END
\$\$;
};

	$bg->{handle} = IPC::Run::start(
		[
			$node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'), '-c', $sql
		],
		'>', \$bg->{out}, '2>', \$bg->{err},
		IPC::Run::timeout(120));
	return $bg;
}

# lh_bg_finish BG --- wait for the background publisher; returns its stderr
sub lh_bg_finish
{
	my ($bg) = @_;
	eval { $bg->{handle}->finish; };
	return $bg->{err};
}

# lh_fault_point --- a random fraction of the burst, 0.1 to 0.9, at which
# to fire the fault (RELIABILITY.md section C); LH_TAP_SEED replays a run.
my $seed = $ENV{LH_TAP_SEED} // (time ^ $$);
srand($seed);
note "fault points from LH_TAP_SEED=$seed";

sub lh_fault_point
{
	return 0.1 + rand(0.8);
}

sub lh_count
{
	my ($node, $sql) = @_;
	my $v = $node->safe_psql('postgres', $sql);
	return $v eq '' ? 0 : $v;
}

sub lh_dispatcher_pids
{
	my ($node) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher' ORDER BY pid"
	);
	return grep { $_ ne '' } split /\n/, $out;
}

# lh_children PID --- pids of the processes whose parent is PID
sub lh_children
{
	my ($ppid) = @_;
	my @kids;
	for my $dir (glob '/proc/[0-9]*')
	{
		my ($pid) = $dir =~ m{/proc/(\d+)$} or next;
		my $st = eval { PostgreSQL::Test::Utils::slurp_file("$dir/stat") } // next;
		push @kids, $pid if $st =~ /^\d+ \(.*\) \S (\d+) / && $1 == $ppid;
	}
	return @kids;
}

# lh_wait_until CODE, SECONDS, STEP_MS --- poll CODE until true; returns
# the seconds it took, or undef on timeout.  Connection errors while a node
# restarts count as "not yet".
sub lh_wait_until
{
	my ($code, $secs, $step) = @_;
	my $t0 = time;
	$step //= 50;
	while (time - $t0 < $secs)
	{
		my $ok = eval { $code->() };
		return time - $t0 if $ok;
		usleep($step * 1000);
	}
	return undef;
}

# lh_wait_dispatchers NODE, N, SECONDS, EXCEPT => [pids] --- wait for N
# dispatchers, none of them one of EXCEPT (a restarted worker has a new
# pid); returns the seconds it took or undef.
sub lh_wait_dispatchers
{
	my ($node, $n, $secs, %opt) = @_;
	my %old = map { $_ => 1 } @{ $opt{except} // [] };
	return lh_wait_until(
		sub {
			my @p = grep { !$old{$_} } lh_dispatcher_pids($node);
			return @p == $n;
		},
		$secs, 100);
}

sub lh_wait_delivered
{
	my ($node, $k, $secs) = @_;
	return lh_wait_until(
		sub {
			lh_count($node,
				"SELECT coalesce(sum(coalesce(cardinality(batch_events), 1)), 0) FROM hub.deliveries WHERE state = 'delivered'")
			  >= $k;
		},
		$secs);
}

# lh_pids_gone PIDS, SECONDS --- wait for every process to be gone (a
# zombie nobody has reaped yet counts as gone); seconds taken or undef.
sub lh_pids_gone
{
	my ($pids, $secs) = @_;
	return lh_wait_until(
		sub {
			for my $p (@$pids)
			{
				next unless kill(0, $p);
				my $st = eval { PostgreSQL::Test::Utils::slurp_file("/proc/$p/stat") } // '';
				return 0 unless $st =~ /^\d+ \(.*\) Z/;
			}
			return 1;
		},
		$secs, 20);
}

# the receiver's log as a list of { ep, id, sha, rolled_back }
sub receiver_hits
{
	my ($recv) = @_;
	my @hits;
	open my $fh, '<', $recv->{log} or die "$recv->{log}: $!";
	while (my $line = <$fh>)
	{
		my $e = eval { decode_json($line) } or next;
		my ($ep) = $e->{path} =~ /[?&]ep=([^&]+)/;
		push @hits,
		  {
			ep => $ep // '',
			id => $e->{headers}{'webhook-id'} // '',
			sha => $e->{sha256},
			body_id => (eval { decode_json($e->{body})->{id} } // ''),
			rolled_back => ($e->{body} =~ /"rolled_back"/ ? 1 : 0),
		  };
	}
	close $fh;
	return @hits;
}

sub first_few
{
	my @l = sort @_;
	return scalar(@l) . (@l ? ' (' . join(', ', @l[ 0 .. ($#l < 4 ? $#l : 4) ]) . ')' : '');
}

# lh_check_invariants NODE, RECV, label => L, dispatchers => N
#
# I1 nothing lost: within 60 s every committed event has one delivery per
#    subscription, and every delivery is delivered (no pending, retrying,
#    dead or in_flight one is left; leases are 600 s, so a lease nobody gave
#    back would fail this).
# I2 no phantoms: per endpoint, the receiver's set of distinct webhook-ids
#    equals the set of event ids of that endpoint's delivered deliveries
#    (so only committed events); no request body is from a rolled-back
#    transaction, none is in the outbox, and every body's id is its
#    webhook-id.
# I3 duplicates are safe: every copy of a webhook-id carries the same body
#    (SHA-256); duplicates are counted and printed.
# I4 complete audit, per delivery (per event of a lease group, whose
#    attempt rows name the event, or none for what the whole group went
#    through, an expired lease): exactly one 'delivered' attempt row,
#    numbered with the delivery's final attempt count; in attempt_id order
#    the rows that close a lease (delivered, retry, dead, expired) are
#    numbered 1, 2, 3, ..., a 'deferred' row carries the number then given
#    back (the next lease reuses it) and 'stale' rows (a late answer to a
#    lease already closed) are not counted; the closing rows number exactly
#    the delivery's attempts.  Against the receiver: a lease sends at most
#    one request, and every claim committed before its request went out, so
#        leases with an answer recorded  <=  receiver hits  <=  leases
#    where "leases" are the distinct lease tokens of non-deferred rows.
#    Equality is not checkable after a crash: a lease claimed just before
#    it may have been given back ('expired') without its request ever
#    being sent, or its request may have reached the receiver with the
#    answer lost; both are 'expired' rows, and that is the slack.
# I6 per-key order (only with per_key subscriptions): per aggregate, the
#    receiver's requests, in arrival order and duplicates included, never go
#    back to an earlier event.
# I5 healthy: the node answers, the configured number of dispatchers is in
#    pg_stat_activity, and the server log has no PANIC and no "terminated
#    by signal 11".
#
# lh_invariants returns ({ duplicates => D, hits => H, expired => E,
# notes => [...] }, [ [name, passed, diagnostics], ... ]) and emits nothing
# (the checker's self-test, 000_checker.pl, feeds it broken histories);
# lh_check_invariants emits one test per check and returns the figures.
# Options: label, dispatchers (expected number, default 1), wait (seconds
# allowed for I1 and I5; default 60 and 30), max_duplicates (the in-flight
# window the faults allowed: sum of max_concurrency per fault), signal11
# (pids the test itself sent SIGSEGV: their "terminated by signal 11" line
# is expected).
sub lh_check_invariants
{
	my ($node, $recv, %opt) = @_;
	my ($res, $checks) = lh_invariants($node, $recv, %opt);

	for my $c (@$checks)
	{
		ok($c->[1], $c->[0]) or diag $c->[2];
	}
	note $_ for @{ $res->{notes} };
	return $res;
}

sub lh_invariants
{
	my ($node, $recv, %opt) = @_;
	my $label = $opt{label} // 'after the fault';
	my $nd = $opt{dispatchers} // 1;
	my (@checks, @notes);
	my $check = sub {
		my ($name, $pass, $why) = @_;
		push @checks, [ $name, $pass ? 1 : 0, $pass ? '' : $why->() ];
	};

	# I1
	my $i1 = q{
SELECT (SELECT count(*) FROM hub.outbox) * (SELECT count(*) FROM hub.subscriptions)
	 = (SELECT sum(coalesce(cardinality(batch_events), 1)) FROM hub.deliveries)
   AND NOT EXISTS (SELECT 1 FROM hub.deliveries WHERE state <> 'delivered')};
	my $wait = $opt{wait} // 60;
	my $took = lh_wait_until(sub { lh_count($node, $i1) eq 't' }, $wait, 200);
	$check->(
		"I1 $label: every committed event delivered (within $wait s)",
		defined $took,
		sub {
			$node->safe_psql('postgres',
				"SELECT state, count(*), min(leased_by), max(last_error) FROM hub.deliveries GROUP BY 1;"
				  . " SELECT 'outbox', count(*) FROM hub.outbox;");
		});

	# I2, I3
	my @hits = receiver_hits($recv);
	my (%sha, %hitcount);
	for my $h (@hits)
	{
		my $k = "$h->{ep} $h->{id}";
		$hitcount{$k}++;
		$sha{$k}{ $h->{sha} } = 1;
	}
	my @eps = split /\n/,
	  $node->safe_psql('postgres', 'SELECT name FROM hub.endpoints ORDER BY 1');
	my (@missing, @extra);
	for my $ep (@eps)
	{
		my %want = map { $_ => 1 } split /\n/,
		  $node->safe_psql('postgres',
			"SELECT x.ev FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)"
			  . " CROSS JOIN LATERAL unnest(coalesce(d.batch_events, ARRAY[d.event_id])) x(ev)"
			  . " WHERE e.name = '$ep' AND d.state = 'delivered'");
		my %got = map { ($_->{ep} eq $ep ? ($_->{id} => 1) : ()) } @hits;
		push @missing, map { "$ep:$_" } grep { !$got{$_} } keys %want;
		push @extra, map { "$ep:$_" } grep { !$want{$_} } keys %got;
	}
	my @rb = grep { $_->{rolled_back} } @hits;
	my @badid = grep { $_->{body_id} ne $_->{id} } @hits;
	my @stray = grep { my $e = $_->{ep}; !grep { $_ eq $e } @eps } @hits;
	my $rb_in_outbox = lh_count($node,
		"SELECT count(*) FROM hub.outbox WHERE payload ? 'rolled_back'");
	$check->(
		"I2 $label: receiver's webhook-ids = delivered committed events, none rolled back",
		!@missing && !@extra && !@rb && !@badid && !@stray && $rb_in_outbox == 0,
		sub {
			"delivered, never received: " . first_few(@missing)
			  . "\nreceived, not a delivered event: " . first_few(@extra)
			  . "\nrolled-back bodies received: " . scalar(@rb)
			  . "; body id <> webhook-id: " . scalar(@badid)
			  . "; unknown endpoint: " . scalar(@stray)
			  . "; rolled-back events in the outbox: $rb_in_outbox";
		});

	my @unsafe = grep { keys %{ $sha{$_} } > 1 } keys %sha;
	my $dups = @hits - keys %hitcount;
	my $dupkeys = grep { $hitcount{$_} > 1 } keys %hitcount;
	$check->(
		"I3 $label: duplicates carry the same webhook-id and body",
		!@unsafe, sub { "webhook-ids with differing bodies: " . first_few(@unsafe) });
	if (defined $opt{max_duplicates})
	{
		# every request a dispatcher has sent but not recorded is in flight
		# (at most the endpoint's max_concurrency) or among the answers it
		# has received and not recorded yet (LH_RECORD_WINDOW): a fault can
		# make at most that many duplicates per endpoint
		$check->(
			"I3 $label: duplicates within the in-flight and record window ($opt{max_duplicates})",
			$dups <= $opt{max_duplicates},
			sub { "$dups duplicates" });
	}
	push @notes,
	    "duplicates $label: $dups extra requests for $dupkeys webhook-ids ("
	  . scalar(@hits)
	  . " requests, "
	  . scalar(keys %hitcount)
	  . " distinct)";

	# I4
	my $misnumbered = lh_count(
		$node, q{
WITH s AS (
	SELECT d.delivery_id, x.ev, a.attempt, a.outcome, a.attempt_id
	FROM hub.deliveries d
	CROSS JOIN LATERAL unnest(coalesce(d.batch_events, ARRAY[d.event_id])) x(ev)
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id
		AND (a.group_event_id IS NULL OR a.group_event_id = x.ev)
), a AS (
	SELECT s.attempt, s.outcome,
		   1 + count(*) FILTER (WHERE s.outcome NOT IN ('deferred', 'stale'))
			   OVER (PARTITION BY s.delivery_id, s.ev ORDER BY s.attempt_id
					 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS expected
	FROM s)
SELECT count(*) FROM a WHERE a.outcome <> 'stale' AND a.attempt <> a.expected});
	my $rows = $node->safe_psql(
		'postgres', q{
SELECT e.name, x.ev, d.attempts,
	   count(a.*) FILTER (WHERE a.outcome NOT IN ('deferred', 'stale')),
	   count(a.*) FILTER (WHERE a.outcome = 'delivered'),
	   coalesce(max(a.attempt) FILTER (WHERE a.outcome = 'delivered'), -1),
	   count(DISTINCT a.lease_token) FILTER (WHERE a.http_status IS NOT NULL),
	   count(DISTINCT a.lease_token) FILTER (WHERE a.outcome <> 'deferred'),
	   count(a.*) FILTER (WHERE a.outcome = 'expired')
FROM hub.deliveries d
JOIN hub.endpoints e USING (endpoint_id)
CROSS JOIN LATERAL unnest(coalesce(d.batch_events, ARRAY[d.event_id])) x(ev)
LEFT JOIN hub.attempts a ON a.delivery_id = d.delivery_id
	AND (a.group_event_id IS NULL OR a.group_event_id = x.ev)
GROUP BY 1, 2, 3});
	my @bad4;
	my $expired = 0;
	for my $r (split /\n/, $rows)
	{
		my ($ep, $id, $att, $closed, $ndel, $delatt, $answered, $leases, $exp) =
		  split /\|/, $r;
		my $hits = $hitcount{"$ep $id"} // 0;
		$expired += $exp;
		push @bad4,
		    "$ep:$id attempts=$att closing=$closed delivered_rows=$ndel"
		  . " delivered_attempt=$delatt answered=$answered hits=$hits leases=$leases"
		  unless $closed == $att
		  && $ndel == 1
		  && $delatt == $att
		  && $answered <= $hits
		  && $hits <= $leases;
	}
	$check->(
		"I4 $label: attempts complete, in order, and consistent with the receiver's hits",
		$misnumbered == 0 && !@bad4,
		sub {
			"misnumbered attempt rows: $misnumbered\n"
			  . join("\n", @bad4[ 0 .. ($#bad4 < 9 ? $#bad4 : 9) ]);
		});
	push @notes, "attempts $label: $expired leases given back as expired";

	# I6 (per_key subscriptions only): per aggregate, the receiver sees the
	# events in publication order, and once it has seen an event it never
	# again sees an earlier one of that aggregate (a successor is claimed
	# only after its predecessor is recorded delivered, so even the
	# duplicates a crash causes keep the order)
	my %order;
	for my $r (split /\n/,
		$node->safe_psql('postgres',
			"SELECT e.name, d.event_id, d.aggregate_id, d.seq FROM hub.deliveries d"
			  . " JOIN hub.endpoints e USING (endpoint_id) WHERE d.ordering = 'per_key'"))
	{
		my ($ep, $id, $agg, $seq) = split /\|/, $r;
		$order{"$ep $id"} = [ "$ep $agg", $seq ];
	}
	if (%order)
	{
		my (%last, @late);
		for my $h (@hits)
		{
			my $o = $order{"$h->{ep} $h->{id}"} or next;
			my ($agg, $seq) = @$o;
			push @late, "$agg: seq $seq after seq $last{$agg}"
			  if defined $last{$agg} && $seq < $last{$agg};
			$last{$agg} = $seq if !defined $last{$agg} || $seq > $last{$agg};
		}
		$check->(
			"I6 $label: per key, requests arrive in publication order, duplicates included",
			!@late, sub { scalar(@late) . " out of order: " . first_few(@late) });
	}

	# I5
	my $one = eval { $node->safe_psql('postgres', 'SELECT 1') } // '';
	$check->("I5 $label: accepts connections", $one eq '1', sub { "SELECT 1 gave '$one'" });
	$check->(
		"I5 $label: $nd dispatcher(s) in pg_stat_activity",
		defined lh_wait_dispatchers($node, $nd, $opt{wait} // 30),
		sub { "dispatchers: " . join(' ', lh_dispatcher_pids($node)) });
	my %sent11 = map { $_ => 1 } @{ $opt{signal11} // [] };
	my @bad = grep {
		/PANIC|terminated by signal 11/
		  && !(/\(PID (\d+)\) was terminated by signal 11/ && $sent11{$1})
	} split /\n/, PostgreSQL::Test::Utils::slurp_file($node->logfile);
	$check->(
		"I5 $label: no PANIC and no signal 11 in the server log",
		!@bad, sub { join("\n", @bad[ 0 .. ($#bad < 4 ? $#bad : 4) ]) });

	return (
		{
			duplicates => $dups,
			hits => scalar(@hits),
			expired => $expired,
			notes => \@notes
		},
		\@checks);
}

1;
