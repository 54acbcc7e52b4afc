/*
 * Roles of logistics_hub (created once per cluster; kept on DROP EXTENSION,
 * as roles are global objects):
 *   hub_reader  read the views (sync state, drift, dead letters); never secrets
 *   hub_writer  publish events and receive inbound messages; apply statuses
 *   hub_admin   endpoints, secrets, mappings, replay, skip; member of both
 *   hub_worker  what the background workers connect as (the setting
 *               logistics_hub.worker_role): no superuser, no membership,
 *               only the grants of the queue functions and tables they
 *               use (90_privileges.sql).  LOGIN because PostgreSQL 15 lets
 *               a background worker connect only as a role that may log in;
 *               it has no password, so no client can log in as it unless
 *               pg_hba.conf trusts it.
 * Grant the first three to login roles: GRANT hub_writer TO app_user;
 */
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['hub_reader', 'hub_writer', 'hub_admin'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hub_worker') THEN
		CREATE ROLE hub_worker LOGIN NOINHERIT;
	END IF;
END
$$;
GRANT hub_reader, hub_writer TO hub_admin;
GRANT USAGE ON SCHEMA hub TO hub_reader, hub_writer, hub_admin;
/*
 * The identifier types (hub.gtin, hub.sscc, hub.gln, hub.container_no)
 * are for everyone: a role outside the hub_* roles that stores one must be
 * able to name the type and compare two (its operators are looked up in
 * this schema).  USAGE lends nothing else: every function of the
 * extension is revoked from PUBLIC except the pure functions of their
 * arguments (the types' I/O, operators and checks), no table, view or
 * sequence has a PUBLIC grant, and nobody but the owner may create here
 * (test/pgtap/privileges.sql and security_matrix.sql pin all of it).
 */
GRANT USAGE ON SCHEMA hub TO PUBLIC;
