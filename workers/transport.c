/*-------------------------------------------------------------------------
 *
 * transport.c
 *		Which transport an endpoint's URL names, and the table of the
 *		transports besides HTTP (transport.h).
 *
 * The scheme decides, case-insensitively: http and https are HTTP
 * (libcurl), postgresql and postgres a central hub over libpq
 * (pg_transport.c), nats a NATS JetStream cluster.  hub.create_endpoint
 * and the endpoints trigger accept only these schemes (hub._egress_check,
 * egress.c), so anything else here is HTTP and fails as a bad URL there.
 *
 * workers/transport.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "transport.h"

/* hub_transport_of_url --- the transport of an endpoint URL */
HubTransport
hub_transport_of_url(const char *url)
{
	if (pg_strncasecmp(url, "postgresql://", 13) == 0 || pg_strncasecmp(url, "postgres://", 11) == 0)
		return HUB_TRANSPORT_PG;
	if (pg_strncasecmp(url, "nats://", 7) == 0)
		return HUB_TRANSPORT_NATS;
	return HUB_TRANSPORT_HTTP;
}

/*
 * the transports besides HTTP, indexed by HubTransport (NULL: not built
 * into this library; requests to such an endpoint fail with a message)
 */
static const HubTransportOps *const transports[] = {
	[HUB_TRANSPORT_HTTP] = NULL,
	[HUB_TRANSPORT_PG] = &hub_pg_transport_ops,
	[HUB_TRANSPORT_NATS] = &hub_nats_transport_ops,
};

/* hub_transport_ops --- the operations of a transport, NULL for HTTP (or one not built) */
const HubTransportOps *
hub_transport_ops(HubTransport t)
{
	if ((int) t < 0 || (int) t >= (int) lengthof(transports))
		return NULL;
	return transports[t];
}

/* hub_transports_deadline --- the earliest timeout of any transport, 0: none */
TimestampTz
hub_transports_deadline(void)
{
	TimestampTz next = 0;

	for (int i = 0; i < (int) lengthof(transports); i++)
	{
		TimestampTz t;

		if (transports[i] == NULL || transports[i]->deadline == NULL)
			continue;
		t = transports[i]->deadline();
		if (t != 0 && (next == 0 || t < next))
			next = t;
	}
	return next;
}

/* hub_transports_run_timers --- let every transport handle its timeouts */
void
hub_transports_run_timers(TimestampTz now)
{
	for (int i = 0; i < (int) lengthof(transports); i++)
		if (transports[i] != NULL && transports[i]->run_timers != NULL)
			transports[i]->run_timers(now);
}

/* hub_transports_abort_all --- the process exits: every transport closes */
void
hub_transports_abort_all(void)
{
	for (int i = 0; i < (int) lengthof(transports); i++)
		if (transports[i] != NULL && transports[i]->abort_all != NULL)
			transports[i]->abort_all();
}
