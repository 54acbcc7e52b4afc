#!/usr/bin/env bash
# test/scripts/dump_restore.sh --- pg_dump keeps the hub's configuration and
# leaves its queue data and audit out: a dump of a database with endpoints,
# secrets, subscriptions, a handler, a custom event type, published and
# delivered events and day partitions of hub.attempts restores without
# error into a new database, with the configuration, no events, and
# identity sequences that go on after the restored ids.  Secrets are in the
# dump only sealed (test/scripts/security_sealed.sh delivers with them).
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
src=dump_src
dst=dump_dst
dump=$(mktemp)
trap 'rm -f "$dump"' EXIT
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
expect() { [ "$2" = "$3" ] || { echo "FAIL: $1: expected '$3', got '$2'"; exit 1; }; echo "ok: $1"; }

q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $src" -c "DROP DATABASE IF EXISTS $dst" \
	-c "CREATE DATABASE $src" -c "CREATE DATABASE $dst"
q -d "$src" >/dev/null <<'SQL'
CREATE EXTENSION logistics_hub;
CREATE FUNCTION public.on_ack(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ SELECT $$;
SELECT hub.register_handler('carrier.*', 'public.on_ack');
INSERT INTO hub.event_types (event_type, required_keys) VALUES ('pallet.wrapped', '{pallet_id}');
SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp', auth_kind => 'bearer', auth_secret => 'tok-dump-4f1c9e');
SELECT hub.subscribe('erp', 'order.*');
SELECT hub.publish('order.created', 'SO-1', '{"order_id": "SO-1"}');
SELECT hub.complete_delivery(delivery_id, lease_token, 200, 1) FROM hub.claim_deliveries(10);
SELECT * FROM hub.run_retention();
SQL
expect "the source has day partitions of hub.attempts" \
	"$(q -d "$src" -c "SELECT count(*) > 1 FROM pg_inherits WHERE inhparent = 'hub.attempts'::regclass")" "t"

"$BIN/pg_dump" -d "$src" >"$dump"
q -d "$dst" -f "$dump" >/dev/null
echo "ok: the dump restores without error"
grep -q "tok-dump-4f1c9e" "$dump" && { echo "FAIL: the dump holds a secret in plain text"; exit 1; }
echo "ok: the dump holds no secret in plain text"
sealed_of() { q -d "$1" -c "SELECT string_agg(e.name || ':' || encode(s.auth_secret, 'hex'), ',') FROM hub.endpoints e JOIN hub._endpoint_secrets s USING (endpoint_id)"; }
expect "endpoints and their secrets are restored, sealed as they were" "$(sealed_of "$dst")" "$(sealed_of "$src")"
expect "subscriptions, handlers and custom event types are restored" \
	"$(q -d "$dst" -c "SELECT (SELECT count(*) FROM hub.subscriptions) || ',' || (SELECT count(*) FROM hub.inbox_handlers) || ',' || (SELECT count(*) FROM hub.event_types WHERE NOT builtin)")" "1,1,1"
expect "queue data and audit are not in the dump" \
	"$(q -d "$dst" -c "SELECT (SELECT count(*) FROM hub.outbox) + (SELECT count(*) FROM hub.deliveries) + (SELECT count(*) FROM hub.attempts)")" "0"
expect "a new endpoint after the restore gets a new id" \
	"$(q -d "$dst" -c "SELECT hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms')")" "2"
expect "and a new subscription too" \
	"$(q -d "$dst" -c "SELECT hub.subscribe('wms', 'order.*')")" "2"
q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE $src" -c "DROP DATABASE $dst"
