-- test/bench/bench_time.sql --- bench_time(query): run a query once and
-- return its wall-clock time in milliseconds; shared by the benchmarks.
CREATE FUNCTION bench_time(q text) RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz;
BEGIN
	t0 := clock_timestamp();
	EXECUTE q;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
