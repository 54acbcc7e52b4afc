/*-------------------------------------------------------------------------
 *
 * poll.h
 *		The poll side of a dispatcher: due pollers into GET requests on the
 *		shared engine (poll_fetch.c), fetched pages recorded with everything
 *		they cause in one transaction each (poll_record.c).
 *
 * The SQL does the protocol (hub._poll_claim, hub._poll_page,
 * hub._poll_next_due, hub._poll_release; sql/src/65_pollers.sql): which
 * pollers are due, the URL and headers of each page, what a page holds,
 * where the run goes next, exactly-once storage into hub.inbox.  The C
 * does the transport: a poll request is a HubRequest (http.h) on its
 * endpoint's queue, under the same max_concurrency, rate limit, auth,
 * egress checks, circuit and throttle as push.
 *
 * workers/poll.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_POLL_H
#define HUB_POLL_H

#include "http.h"

/* one page of a poller's run */
typedef struct HubPollRequest
{
	HubRequest	req;			/* first: the engine's part (req.url: the page) */
	int			poller_id;
	int64		lease;
	TimestampTz lease_from;		/* when the lease was taken or last extended */
	int			nheaders;
	char	  **headers;		/* "Name: value" from the SQL (in req.cxt) */
	HubOutcome	outcome;		/* once finished (error copied into req.cxt) */
	TimestampTz wait_until;		/* given back: sent again then (0: not waiting) */
} HubPollRequest;

/* poll_fetch.c */
extern bool hub_poll_enqueue(int poller_id, int endpoint_id, int64 lease, const char *url,
							 char **headers, int nheaders);
extern void hub_poll_fetch(TimestampTz now);
extern void hub_poll_wake(void);
extern void hub_poll_run_over(TimestampTz next_at);
extern TimestampTz hub_poll_next_wakeup(void);
extern void hub_poll_done(HubPollRequest *req);
extern void hub_poll_give_back(HubPollRequest *req, TimestampTz back_at);

/* poll_record.c */
extern void hub_poll_finished(HubRequest *req, const HubOutcome *o);
extern bool hub_poll_pages_pending(void);
extern void hub_poll_record(void);

#endif							/* HUB_POLL_H */
