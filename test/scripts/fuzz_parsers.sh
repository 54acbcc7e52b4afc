#!/usr/bin/env bash
# test/scripts/fuzz_parsers.sh --- the identifier and traceparent parsers under libFuzzer with
# AddressSanitizer and UndefinedBehaviorSanitizer (test/fuzz/fuzz_parsers.c
# explains why outside the server): LH_FUZZ_SECONDS (20) of coverage-guided
# inputs, seeded with the published test vectors.  Fails on any sanitizer
# report, crash, or disagreement between a parser's throwing and
# non-throwing modes.  LH_FUZZ_SECONDS=0 skips it.
source test/harness/lib.sh
seconds=${LH_FUZZ_SECONDS:-20}
[ "$seconds" -gt 0 ] || { echo "skipped (LH_FUZZ_SECONDS=0)"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkglib=/usr/lib/postgresql/$PG_MAJOR/lib
clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-Wall -Werror -Wno-ignored-attributes \
	-I"$("$PG_CONFIG" --includedir-server)" -Iextension test/fuzz/fuzz_parsers.c \
	"$pkglib/libpgcommon.a" "$pkglib/libpgport.a" -o "$work/fuzz"
mkdir "$work/corpus"
i=0
for v in '(01)09521234543213(10)ABC123(17)251231' $']C1010952123454321310ABC123\x1d17251231' \
	'(00)376104250021234569' '(01)38425876095074(17)181119(37)1' '(3103)000189(15)000100' \
	'(420)12345(400)PO\(1)' 6291041500213 96385074 7300011000017 376104250021234569 \
	8904000210037 CSQU3054383 'tasu 117000 0' APZU3789870 \
	00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \
	cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-the-future-holds; do
	printf '%s' "$v" >"$work/corpus/seed$((i++))"
done
cd "$work"
set +e
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	./fuzz -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 corpus >fuzz.log 2>&1
rc=$?
set -e
grep -E '^(INFO: Seed|stat::number_of_executed_units|stat::new_units_added|Done)' fuzz.log || true
if [ "$rc" -ne 0 ]; then
	tail -60 fuzz.log
	for a in crash-* oom-* timeout-* leak-*; do
		[ -f "$a" ] && { echo "input that failed ($a), base64:"; base64 "$a"; }
	done
	echo "FAIL: the fuzzer found a problem (exit $rc)"
	exit 1
fi
echo "ok: $(grep -oE 'Done [0-9]+ runs' fuzz.log) through gtin, sscc, gln, container_no, gs1 and traceparent parsers with ASan+UBSan, no report"
