/*
 * Roles of logistics_hub (created once per cluster; kept on DROP EXTENSION,
 * as roles are global objects):
 *   hub_reader  read the views (sync state, drift, dead letters); never secrets
 *   hub_writer  publish events and receive inbound messages; apply statuses
 *   hub_admin   endpoints, secrets, mappings, replay, skip; member of both
 * Grant them to login roles: GRANT hub_writer TO app_user;
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
END
$$;
GRANT hub_reader, hub_writer TO hub_admin;
GRANT USAGE ON SCHEMA hub TO hub_reader, hub_writer, hub_admin;
