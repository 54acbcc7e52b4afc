/*-------------------------------------------------------------------------
 *
 * hub_workers.h
 *		The push side of logistics_hub: the launcher and dispatcher
 *		background workers, their shared state, the commit-time wake-up, the
 *		egress policy and Standard Webhooks signing.
 *
 * workers/hub_workers.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_WORKERS_H
#define HUB_WORKERS_H

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

struct sockaddr;

/* the most dispatchers logistics_hub.dispatchers may ask for */
#define HUB_MAX_DISPATCHERS 16
/* the most inbox workers logistics_hub.inbox_workers may ask for */
#define HUB_MAX_INBOX_WORKERS 16

/* the kinds of worker the launcher keeps running, per database */
typedef enum HubWorkerKind
{
	HUB_KIND_DISPATCHER = 0,
	HUB_KIND_INBOX = 1
} HubWorkerKind;

#define HUB_KINDS 2
#define HUB_KIND_MAX_SLOTS Max(HUB_MAX_DISPATCHERS, HUB_MAX_INBOX_WORKERS)

/* settings (workers/launcher.c) */
extern char *hub_database;
extern char *hub_databases;
extern int	hub_max_databases;
extern char *hub_worker_role;
extern int	hub_dispatchers;
extern int	hub_max_in_flight;
extern int	hub_claim_batch;
extern int	hub_claim_max_bytes;
extern int	hub_lease_seconds;
extern int	hub_dispatcher_naptime_ms;
extern int	hub_poll_interval_ms;

/* the idle dispatcher's naptime, honouring the deprecated name when set */
#define hub_naptime_ms() (hub_poll_interval_ms >= 10 ? hub_poll_interval_ms : hub_dispatcher_naptime_ms)
extern int	hub_connect_timeout_ms;
extern int	hub_max_response_bytes;
extern int	hub_poll_max_page_bytes;
extern int	hub_retry_after_max_s;
extern int	hub_retention_interval_s;
extern char *hub_ca_file;
extern char *hub_event_source;

/* called from _PG_init */
extern void hub_workers_define_gucs(void);
extern void hub_workers_register(void);
extern void hub_shmem_init_hooks(void);

/* the databases served: logistics_hub.databases, or logistics_hub.database */
extern List *hub_database_names(void);
extern bool hub_database_listed(const char *name);

/* shared state (workers/shmem.c) */
extern bool hub_shmem_ready(void);
extern void hub_wake_dispatchers(void);
extern void hub_wake_inbox_workers(void);

/* ... a worker's own slot (the worker process) */
extern void hub_worker_attach(HubWorkerKind kind, int dbslot, int slot);
extern pid_t hub_dispatcher_pid(int slot);	/* of the worker's database */
extern const char *hub_my_database(void);
extern void hub_status_step(const char *step);
extern void hub_status_in_flight(int n);
extern void hub_status_claimed(void);
extern void hub_status_recorded(void);
extern void hub_status_extension_missing(bool missing);

/* ... the database slots (the launcher) */
extern int	hub_dbslot_find(const char *name);
extern int	hub_dbslot_take(const char *name);
extern void hub_dbslot_set_oid(int dbslot, Oid dboid);
extern void hub_dbslot_free(int dbslot);
extern const char *hub_dbslot_name(int dbslot, char *buf);
extern bool hub_dbslot_extension_missing(int dbslot);
extern pid_t hub_slot_pid(int dbslot, HubWorkerKind kind, int slot);
extern void hub_slot_count_start(int dbslot, HubWorkerKind kind, int slot, bool restart);
extern void hub_launcher_attach(void);
extern void hub_launcher_step(const char *step);

/* settings of the inbox workers (workers/inbox_worker.c) */
extern int	hub_inbox_workers;
extern void hub_inbox_define_gucs(void);

/* a worker's session settings (workers/worker_session.c) */
extern void hub_pin_session(const char *who);

/*
 * hub_note_outbox_insert --- called once per inserted event (the outbox
 * contract trigger): the dispatchers are woken when the top-level
 * transaction commits, never before and never on abort.
 */
extern void hub_note_outbox_insert(void);

/*
 * hub_note_inbox_insert --- called by the statement-level trigger of
 * hub.inbox: the inbox workers are woken when the top-level transaction
 * commits.
 */
extern void hub_note_inbox_insert(void);

/* egress policy (workers/egress.c) */
extern bool hub_egress_address_allowed(const struct sockaddr *addr);
extern void *hub_egress_policy_copy(void);
extern bool hub_egress_copy_allows(const void *policy, const struct sockaddr *addr);
extern bool hub_egress_url_allowed(const char *url, char **why);
extern bool hub_url_has_userinfo(const char *url);
extern bool hub_url_has_password(const char *url);
extern bool hub_address_is_public(const struct sockaddr *addr);
extern void hub_format_address(const struct sockaddr *addr, char *buf, size_t len);

/* Standard Webhooks (workers/signing.c) */
extern bool hub_webhook_sign(const char *secret, const char *msg_id, int64 timestamp,
							 const char *body, size_t bodylen, StringInfo out);

/* entry points of the workers */
extern PGDLLEXPORT void hub_launcher_main(Datum arg);
extern PGDLLEXPORT void hub_dispatcher_main(Datum arg);
extern PGDLLEXPORT void hub_inbox_worker_main(Datum arg);

#endif							/* HUB_WORKERS_H */
