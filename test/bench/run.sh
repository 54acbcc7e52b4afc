#!/usr/bin/env bash
# test/bench/run.sh --- `make bench`: run every benchmark script in
# test/bench/ one after the other (each starts and removes its own cluster)
# and print their figures.  Benchmarks assert nothing.  Every benchmark
# cluster runs with fsync = on, as a real server does (the test clusters,
# which only check behaviour, keep fsync = off).
set -euo pipefail
cd "$(dirname "$0")"
for b in *.sh; do
	[ "$b" = run.sh ] && continue
	echo "################ $b"
	bash "$b"
done
