#!/usr/bin/env bash
# test/scripts/security_sealed.sh --- sealed secrets, live (issue 16).
#   - a bearer token and a signing secret set through the API are delivered
#     with (the receiver checks the token and verifies the signature with
#     Python's hmac), yet appear in plain text (nor base64, nor decoded) in
#     no table, no WAL file, no file of the data directory, no pg_dump and
#     no server log line
#   - the dump restored into a new database on the same server (same key)
#     delivers, signed correctly
#   - restarted without the key file: a WARNING names the file; the hub
#     runs (an endpoint without secrets delivers); setting a secret fails
#     with 55000; the endpoint with secrets is paused with the reason
#     (audited, a WARNING naming it) and nothing is sent to it
#   - rotation: a new key with the old one as a previous key, a restart,
#     hub.reseal_secrets() re-encrypts everything under the new key; the
#     old key removed, a restart, resume: the held event and a new one are
#     delivered, signed correctly
#   - a key file readable by others is refused with a WARNING
set -euo pipefail
source test/receiver/push_lib.sh

push_setup security-sealed 124 "logistics_hub.poll_interval = 200ms"
DATA=$LH_CLUSTER_DIR/data
LOG=$LH_CLUSTER_DIR/server.log
KEY=$LH_CLUSTER_DIR/secret.key
DUMP=$LH_CLUSTER_DIR/hub.dump

TOKEN=Zq7-sealed-bearer-9XK2wq
SIGN_RAW=SealedSigningKeyForTest42
SIGN_B64=$(printf '%s' "$SIGN_RAW" | base64)
SIGN=whsec_$SIGN_B64

restart() {
	lh_as_cluster_user "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 restart >/dev/null ||
		fail "the server did not restart"
	must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" 30 \
		"no dispatcher after the restart"
}
conf() { printf '%s\n' "$@" >>"$DATA/postgresql.conf"; }
new_key() {
	(umask 077 && head -c 32 /dev/urandom >"$1")
	[ "$(id -u)" -eq 0 ] && chown "$CLUSTER_USER" "$1"
	chmod 600 "$1"
}
# no file or stream given holds the token or the signing secret (whole,
# its base64 or the decoded key)
no_plain() {
	local what=$1
	shift
	if grep -a -r -l -F -e "$TOKEN" -e "$SIGN_B64" -e "$SIGN_RAW" "$@" 2>/dev/null; then
		fail "$what holds a secret in plain text"
	fi
	ok "$what: no secret in plain text"
}
delivered_ev() { echo "SELECT coalesce(bool_and(state = 'delivered'), false) FROM hub.deliveries WHERE event_id = '$1'"; }
sent() { recv "print(sum(1 for e in E if e['headers'].get('webhook-id') == '$1'))"; }
check_auth() {
	local bad
	bad=$(recv "print(sum(1 for e in E if 'ep=sealed' in e['path'] and e['headers'].get('authorization') != 'Bearer $TOKEN'))")
	[ "$bad" = 0 ] || fail "$bad requests without the bearer token"
	lh_receiver_verify "$SIGN" --path ep=sealed >/dev/null || fail "a signature does not verify with the secret set"
	ok "$1: every request carries the token and verifies with the signing secret"
}

# ---- set through the API, delivered with
push_endpoint sealed "ok?ep=sealed" "auth_kind => 'bearer'" "auth_secret => '$TOKEN'" "signing_secret => '$SIGN'"
push_endpoint plain "ok?ep=plain"
[ "$(q "SELECT bool_and(hub.sealed_key_id(v) = (SELECT key_id FROM hub.secret_keys() WHERE is_current))
        FROM hub._endpoint_secrets x, unnest(ARRAY[x.auth_secret] || x.signing_secrets) v WHERE v IS NOT NULL")" = t ] ||
	fail "the secrets are not sealed under the current key"
E1=$(push_publish sealed SO-1)
must_wait "$(delivered_ev "$E1")" 30 "the first event was not delivered"
check_auth "delivered"

# ---- nowhere in plain text: the table, the WAL, the data directory, a dump
[ "$(q "SELECT count(*) FROM hub._endpoint_secrets x
        WHERE position(convert_to('$TOKEN', 'UTF8') IN x.auth_secret) > 0
           OR EXISTS (SELECT FROM unnest(x.signing_secrets) s WHERE position(convert_to('$SIGN_B64', 'UTF8') IN s) > 0)")" = 0 ] ||
	fail "the table holds a secret"
q "CHECKPOINT" "SELECT pg_switch_wal()" >/dev/null
no_plain "the WAL files" "$DATA"/pg_wal/0*
no_plain "the data directory" "$DATA"
"$PG_BIN/pg_dump" -d postgres >"$DUMP"
grep -q "_endpoint_secrets" "$DUMP" || fail "the dump has no secrets table"
no_plain "pg_dump" "$DUMP"

# ---- restored into a new database on the same server: delivers
psql -X -q -d template1 -c "DROP DATABASE postgres WITH (FORCE)" -c "CREATE DATABASE postgres" >/dev/null
psql -X -q -d postgres -f "$DUMP" >/dev/null 2>"$LH_CLUSTER_DIR/restore.err" || true
grep -v "already exists" "$LH_CLUSTER_DIR/restore.err" | grep -q ERROR && { cat "$LH_CLUSTER_DIR/restore.err"; fail "the restore failed"; }
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" 30 \
	"no dispatcher after the restore"
E2=$(push_publish sealed SO-2)
must_wait "$(delivered_ev "$E2")" 30 "after the restore: not delivered"
[ "$(sent "$E2")" -ge 1 ] || fail "after the restore: nothing arrived"
check_auth "restored dump"

# ---- without the key: the hub runs, the endpoint with secrets pauses
mv "$KEY" "$KEY.away"
restart
grep -q "secret key file \"$KEY\" named by logistics_hub.secret_key_file is not used" "$LOG" ||
	fail "no WARNING about the missing key file"
[ "$(q "SELECT count(*) FROM hub.secret_keys()")" = 0 ] || fail "a key is loaded without its file"
E3=$(push_publish sealed SO-3)
P3=$(push_publish plain SO-3p)
must_wait "SELECT paused FROM hub.endpoints WHERE name = 'sealed'" 30 "the endpoint was not paused"
must_wait "$(delivered_ev "$P3")" 30 "an endpoint without secrets stopped delivering"
[ "$(q "SELECT count(*) FROM hub.operator_audit WHERE action = 'pause_unsealed' AND target = 'sealed'
        AND reason LIKE 'sealed secrets cannot be opened: % no secret key is loaded%'")" = 1 ] ||
	fail "the pause and its reason are not audited: $(q "SELECT string_agg(action || ' ' || coalesce(reason, ''), '; ') FROM hub.operator_audit")"
# (one line naming the worker and its step, as every dispatcher WARNING)
grep -qE "WARNING:  logistics_hub dispatcher 0: [a-z ,]+: endpoint \"sealed\" paused: sealed secrets cannot be opened" "$LOG" ||
	fail "no WARNING naming the endpoint"
# the lease given back without an attempt: the request was never started
must_wait "SELECT state = 'pending' AND attempts = 0 FROM hub.deliveries WHERE event_id = '$E3'" 30 \
	"the held delivery: $(q "SELECT state || ',' || attempts FROM hub.deliveries WHERE event_id = '$E3'")"
[ "$(sent "$E3")" = 0 ] || fail "an event was sent without its secrets"
ok "no key: endpoint paused with the reason, nothing sent, no attempt spent; the plain endpoint delivers"
[ "$(q "SELECT public.sqlstate_of(\$\$SELECT hub.set_endpoint_credentials('sealed', auth_secret => 'other')\$\$)")" = 55000 ] ||
	fail "a secret was set without a key"
ok "no key: setting a secret fails with 55000"

# ---- rotation: new key, old one previous, reseal, old one gone
OLD_ID=$(q "SELECT DISTINCT hub.sealed_key_id(auth_secret) FROM hub._endpoint_secrets WHERE auth_secret IS NOT NULL")
mv "$KEY.away" "$KEY.old"
new_key "$KEY"
conf "logistics_hub.previous_secret_key_files = '$KEY.old'"
restart
[ "$(q "SELECT string_agg(key_id || ':' || is_current, ',' ORDER BY is_current) FROM hub.secret_keys()")" != "" ] &&
[ "$(q "SELECT key_id FROM hub.secret_keys() WHERE NOT is_current")" = "$OLD_ID" ] ||
	fail "the previous key is not loaded: $(q "SELECT string_agg(key_id || ':' || is_current, ',') FROM hub.secret_keys()")"
NEW_ID=$(q "SELECT key_id FROM hub.secret_keys() WHERE is_current")
[ "$(q "SELECT row(endpoints, resealed, already_current)::text FROM hub.reseal_secrets()")" = "(1,2,0)" ] ||
	fail "reseal_secrets did not reseal the token and the signing secret"
[ "$(q "SELECT string_agg(DISTINCT hub.sealed_key_id(v), ',') FROM hub._endpoint_secrets x,
        unnest(ARRAY[x.auth_secret] || x.signing_secrets) v WHERE v IS NOT NULL")" = "$NEW_ID" ] ||
	fail "not everything is sealed under the new key"
[ "$(q "SELECT row(endpoints, resealed, already_current)::text FROM hub.reseal_secrets()")" = "(0,0,2)" ] ||
	fail "a second reseal_secrets changed something"
ok "rotation: resealed under $NEW_ID (was $OLD_ID)"
rm -f "$KEY.old"
conf "logistics_hub.previous_secret_key_files = ''"
restart
q "SELECT hub.resume_endpoint('sealed', 'key restored')" >/dev/null
E4=$(push_publish sealed SO-4)
must_wait "$(delivered_ev "$E3")" 30 "the held event was not delivered after the rotation"
must_wait "$(delivered_ev "$E4")" 30 "a new event was not delivered after the rotation"
check_auth "after the rotation, old key removed"

# ---- a key file others can read is refused
chmod 644 "$KEY"
restart
grep -q "Its permissions are 0644: group and others must have none" "$LOG" || fail "a world-readable key was not refused"
[ "$(q "SELECT count(*) FROM hub.secret_keys()")" = 0 ] || fail "a world-readable key was loaded"
ok "a key file readable by others is refused"

# ---- and never in the server log (nor in a new dump)
no_plain "the server log" "$LOG"
"$PG_BIN/pg_dump" -d postgres >"$DUMP"
no_plain "pg_dump after the rotation" "$DUMP"
q "CHECKPOINT" >/dev/null
no_plain "the WAL files at the end" "$DATA"/pg_wal/0*
if grep -E "terminated by signal|PANIC|TRAP:" "$LOG"; then
	fail "the server log shows a crash"
fi
ok "no crash in the server log"
