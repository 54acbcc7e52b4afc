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

struct sockaddr;

/* the most dispatchers logistics_hub.dispatchers may ask for */
#define HUB_MAX_DISPATCHERS 16
/* the most inbox workers logistics_hub.inbox_workers may ask for */
#define HUB_MAX_INBOX_WORKERS 16

/* settings (workers/launcher.c) */
extern char *hub_database;
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

/* shared state (workers/shmem.c) */
extern bool hub_shmem_ready(void);
extern void hub_dispatcher_attach(int slot);
extern pid_t hub_dispatcher_pid(int slot);
extern void hub_wake_dispatchers(void);
extern void hub_inbox_worker_attach(int slot);
extern pid_t hub_inbox_worker_pid(int slot);
extern void hub_wake_inbox_workers(void);

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
