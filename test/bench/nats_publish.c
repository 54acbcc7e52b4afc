/*-------------------------------------------------------------------------
 *
 * nats_publish.c
 *		The ceiling of test/bench/nats_jetstream.sh: the same messages the
 *		hub publishes (a subject per key, Nats-Msg-Id, a body of the same
 *		size), published asynchronously into the same stream through the
 *		same client library (libnats), with no database.
 *
 *	nats_publish URLS EVENT_TYPE N KEYS BODY_BYTES MAX_PENDING
 *
 * Publishes N messages shaped as the hub's for events of EVENT_TYPE over
 * KEYS aggregates "SO-<k>": subject lhub.<EVENT_TYPE>.SO-<k> (the default
 * subject template), a Nats-Msg-Id of a UUID's length, the headers
 * Lhub-Event-Type and Lhub-Aggregate-Id, a body of BODY_BYTES, with at most
 * MAX_PENDING unacknowledged; waits for every acknowledgement, and prints
 * "<acked> <errors> <seconds> <msgs/s>".
 *
 * test/bench/nats_publish.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <time.h>

#include <nats/nats.h>

static atomic_long acked;
static atomic_long errors;

static void
on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	if (pa != NULL)
		atomic_fetch_add(&acked, 1);
	else
		atomic_fetch_add(&errors, 1);
	natsMsg_Destroy(msg);
}

static void
die(const char *what, natsStatus s)
{
	fprintf(stderr, "nats_publish: %s: %s\n", what, natsStatus_GetText(s));
	exit(1);
}

int
main(int argc, char **argv)
{
	natsOptions *opts;
	natsConnection *nc;
	jsCtx	   *js;
	jsOptions	jo;
	natsStatus	s;
	const char *servers[16];
	int			nservers = 0;
	long		n,
				keys,
				size;
	char	   *body;
	struct timespec t0,
				t1;
	double		secs;

	if (argc != 7)
	{
		fprintf(stderr, "usage: nats_publish URLS EVENT_TYPE N KEYS BODY_BYTES MAX_PENDING\n");
		return 1;
	}
	for (char *tok = strtok(argv[1], ","); tok != NULL && nservers < 16; tok = strtok(NULL, ","))
		servers[nservers++] = tok;
	n = atol(argv[3]);
	keys = atol(argv[4]);
	size = atol(argv[5]);
	body = malloc(size + 1);
	memset(body, 'x', size);
	body[size] = '\0';

	if ((s = natsOptions_Create(&opts)) != NATS_OK ||
		(s = natsOptions_SetServers(opts, servers, nservers)) != NATS_OK ||
		(s = natsOptions_SetNoRandomize(opts, true)) != NATS_OK)
		die("options", s);
	if ((s = natsConnection_Connect(&nc, opts)) != NATS_OK)
		die("connect", s);
	jsOptions_Init(&jo);
	jo.PublishAsync.MaxPending = atol(argv[6]);
	jo.PublishAsync.AckHandler = on_ack;
	if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
		die("jetstream", s);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 1; i <= n; i++)
	{
		natsMsg    *m;
		jsPubOptions po;
		char		subject[256],
					key[32],
					id[48];

		snprintf(key, sizeof(key), "SO-%ld", keys > 0 ? i % keys : 0);
		snprintf(subject, sizeof(subject), "lhub.%s.%s", argv[2], key);
		snprintf(id, sizeof(id), "00000000-0000-7000-8000-%012lx", i);
		if ((s = natsMsg_Create(&m, subject, NULL, body, (int) size)) != NATS_OK ||
			(s = natsMsgHeader_Set(m, "Lhub-Event-Type", argv[2])) != NATS_OK ||
			(s = natsMsgHeader_Set(m, "Lhub-Aggregate-Id", key)) != NATS_OK)
			die("message", s);
		jsPubOptions_Init(&po);
		po.MsgId = id;
		po.MaxWait = 10000;
		if ((s = js_PublishMsgAsync(js, &m, &po)) != NATS_OK)
			die("publish", s);
	}
	{
		jsPubOptions po;

		jsPubOptions_Init(&po);
		po.MaxWait = 60000;
		if ((s = js_PublishAsyncComplete(js, &po)) != NATS_OK)
			die("complete", s);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("%ld %ld %.3f %.0f\n", (long) acked, (long) errors, secs, acked / secs);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	natsOptions_Destroy(opts);
	nats_Close();
	return 0;
}
