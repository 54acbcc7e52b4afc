/*
 * 72_workers.sql --- the background workers as the operator sees them: one
 * row per worker of the cluster (the launcher, and the dispatchers and inbox
 * workers of every database served, running or not), read from shared memory by
 * hub._workers() (workers/shmem.c); nothing without preloading.
 *
 * The endpoints and pollers a dispatcher serves are its shard's share
 * (hub._serves for the push side; the pollers of an endpoint it serves,
 * any shard for a spread endpoint), computed here from its number and
 * shard count against this database's endpoints and pollers: they are
 * shown for the dispatchers of the current database only (another
 * database's endpoints are not visible from here), NULL for the others.
 */
CREATE FUNCTION hub._workers(
	OUT database name, OUT pid integer, OUT kind text, OUT number integer,
	OUT started_at timestamptz, OUT step text, OUT in_flight integer, OUT nshards integer,
	OUT last_claim_at timestamptz, OUT last_record_at timestamptz, OUT restarts bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'hub_workers_list' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION hub._workers() IS
'API: Private. The workers of the cluster as they publish themselves in shared memory (no row without shared_preload_libraries); read it through hub.workers.';

CREATE VIEW hub.workers AS
SELECT w.database, w.pid, w.kind, w.number, w.started_at, w.step, w.in_flight,
	   CASE WHEN w.kind = 'dispatcher' AND w.database = pg_catalog.current_database() THEN
		   ARRAY(SELECT e.endpoint_id FROM hub.endpoints e
				 WHERE ((w.number - e.endpoint_id) % w.nshards + w.nshards) % w.nshards
					   < CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END
				 ORDER BY e.endpoint_id)
	   END AS endpoints,
	   CASE WHEN w.kind = 'dispatcher' AND w.database = pg_catalog.current_database() THEN
		   ARRAY(SELECT p.name FROM hub.pollers p JOIN hub.endpoints e USING (endpoint_id)
				 WHERE e.spread OR e.endpoint_id % w.nshards = w.number
				 ORDER BY p.name)
	   END AS pollers,
	   w.last_claim_at, w.last_record_at, w.restarts
FROM hub._workers() w;
COMMENT ON VIEW hub.workers IS
'One row per background worker of the cluster: the launcher (database NULL) and, per database served (logistics_hub.databases), its dispatchers and inbox workers (a slot whose worker is not running, stopped or failing and about to be started again, with pid NULL and step stopped): pid, kind (launcher, dispatcher, inbox), number (the slot, and a dispatcher''s shard, within its database), started_at, the current step (idle between steps), HTTP requests in flight (a dispatcher), the endpoints and pollers a dispatcher serves (for the current database''s dispatchers only, else NULL), when it last claimed work and last recorded outcomes (an inbox worker: its last batch that processed messages), and how many times the launcher started a worker in that slot again since the database was first served (the launcher''s row: its own restarts; reset by a server restart or crash).';

REVOKE EXECUTE ON FUNCTION hub._workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._workers() TO hub_reader;
GRANT SELECT ON hub.workers TO hub_reader;
