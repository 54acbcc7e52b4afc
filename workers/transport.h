/*-------------------------------------------------------------------------
 *
 * transport.h
 *		The transports of the push/poll engine besides HTTP: how a request
 *		reaches an endpoint whose URL is not http(s) (postgresql:// through
 *		libpq, nats:// through NATS JetStream), sharing the engine's queues,
 *		limits, circuit, throttling and event loop with HTTP.
 *
 * The endpoint's URL scheme picks the transport when the endpoint loads
 * (endpoints.c sets HubEndpoint.transport; hub_transport_of_url).  The
 * send queue (send_queue.c) applies the same limits to every request
 * (max_in_flight, max_concurrency, rate, usability, queue wait); then an
 * HTTP request goes to libcurl, any other to its transport's start
 * operation.  The transport reports the outcome later, from the loop
 * (a socket it watches became ready, or its timer fell due), with
 * hub_send_complete: in-flight accounting, the maker's finished operation.
 * A success is http_status 0 and error NULL, with the transport's
 * acknowledgement written into req->excerpt (it becomes the attempt's
 * excerpt); a failure has the error text (it counts for the circuit);
 * given_back with back_at gives the request back without an attempt.
 *
 * Sockets and timers: a transport puts its own file descriptors (libpq's
 * PQsocket, a pipe or eventfd its library's threads write to) in the loop's
 * epoll set with hub_loop_watch (again with other events to change them)
 * and takes them out with hub_loop_unwatch before closing them; ready is
 * called from the worker's loop, never from another thread, outside any
 * transaction, and must not raise for outside data.  Its timeouts go
 * through its deadline / run_timers operations, which the loop asks and
 * calls like libcurl's timer.
 *
 * A push request's event (id, type, aggregate id, correlation id) is read
 * with hub_push_request_event (push.h), not re-parsed from the body.
 *
 * workers/transport.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_TRANSPORT_H
#define HUB_TRANSPORT_H

#include "http.h"

typedef struct HubTransportOps
{
	const char *name;			/* "postgresql", "nats" (for messages) */

	/*
	 * send the request (its body is built; push requests carry their event,
	 * hub_push_request_event): true when it is under way and will be
	 * reported by hub_send_complete, false with *error when it fails
	 * without being sent (reported by the caller as an attempt)
	 */
	bool		(*start) (HubRequest *req, char **error);

	/*
	 * the endpoint's settings were (re)read: its URL or secrets may have
	 * changed (compare with what ep->transport_state holds; a changed
	 * connection is closed once its requests are done)
	 */
	void		(*endpoint_loaded) (HubEndpoint *ep);

	/*
	 * the endpoint is no longer of this transport (its URL changed scheme):
	 * fail what is in flight (hub_send_complete), close, free
	 * ep->transport_state and set it to NULL
	 */
	void		(*endpoint_dropped) (HubEndpoint *ep);

	/* the process exits: close everything, without reporting */
	void		(*abort_all) (void);

	/* earliest timeout of its requests, 0: none (may be NULL) */
	TimestampTz (*deadline) (void);

	/* fail or retry what timed out by now (may be NULL) */
	void		(*run_timers) (TimestampTz now);
} HubTransportOps;

/* transport.c */
extern HubTransport hub_transport_of_url(const char *url);
extern const HubTransportOps *hub_transport_ops(HubTransport t);
extern TimestampTz hub_transports_deadline(void);
extern void hub_transports_run_timers(TimestampTz now);
extern void hub_transports_abort_all(void);

/* http_loop.c: a transport's own descriptors in the loop's epoll set */
typedef void (*HubWatchFn) (int fd, uint32 events, void *arg);
extern bool hub_loop_watch(int fd, uint32 epoll_events, HubWatchFn ready, void *arg);
extern void hub_loop_unwatch(int fd);

/* the transports */
/* (each transport declares its ops here; transport.c lists them) */
extern const HubTransportOps hub_pg_transport_ops;	/* pg_transport.c */
extern void hub_pg_transport_define_gucs(void);
extern const HubTransportOps hub_nats_transport_ops;	/* nats_transport.c */
extern char *hub_nats_subject(const char *template, const char *event_type, const char *aggregate_id);

#endif							/* HUB_TRANSPORT_H */
