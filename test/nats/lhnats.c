/*-------------------------------------------------------------------------
 *
 * lhnats.c
 *		The NATS JetStream side of the nats transport's tests, through the
 *		same C client library as the extension (libnats): create a stream,
 *		name its leader, read it back, publish into it.
 *
 *	lhnats stream URLS NAME SUBJECTS REPLICAS
 *		create the stream (file storage, duplicate window 2 minutes) and
 *		wait (up to 60 s) until it answers with a leader
 *	lhnats leader URLS NAME
 *		print the server name of the stream's leader
 *	lhnats dump URLS NAME
 *		print every message of the stream, one line each:
 *		"<seq> <subject> <Nats-Msg-Id>", in stream order, read with an
 *		ordered consumer
 *	lhnats dump-sizes URLS NAME
 *		the same with the body's length in bytes as a fourth field
 *	lhnats publish URLS SUBJECT_PREFIX N KEYS [FIRST]
 *		publish N messages synchronously, message i (from FIRST, 1) with
 *		Nats-Msg-Id "m<i>" on subject "<prefix>.k<i % KEYS>" and body
 *		{"n": i}; every one acknowledged
 *
 * URLS is a comma-separated server list.  Exit status 0 on success, 1 with a
 * message on stderr otherwise.
 *
 * test/nats/lhnats.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nats/nats.h>

static void
die(const char *what, natsStatus s)
{
	fprintf(stderr, "lhnats: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(NULL));
	exit(1);
}

static natsConnection *
connect_to(const char *urls, jsCtx **js)
{
	natsOptions *opts;
	natsConnection *nc;
	natsStatus	s;
	jsOptions	jo;
	char	   *list = strdup(urls);
	const char *servers[16];
	int			n = 0;

	for (char *tok = strtok(list, ","); tok != NULL && n < 16; tok = strtok(NULL, ","))
		servers[n++] = tok;
	if ((s = natsOptions_Create(&opts)) != NATS_OK ||
		(s = natsOptions_SetServers(opts, servers, n)) != NATS_OK ||
		(s = natsOptions_SetMaxReconnect(opts, -1)) != NATS_OK ||
		(s = natsOptions_SetReconnectWait(opts, 100)) != NATS_OK)
		die("options", s);
	if ((s = natsConnection_Connect(&nc, opts)) != NATS_OK)
		die("connect", s);
	natsOptions_Destroy(opts);
	jsOptions_Init(&jo);
	jo.Wait = 10000;
	if ((s = natsConnection_JetStream(js, nc, &jo)) != NATS_OK)
		die("jetstream context", s);
	return nc;
}

static jsStreamInfo *
stream_info(jsCtx *js, const char *name, int tries)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s = NATS_OK;

	for (int t = 0; t < tries; t++)
	{
		s = js_GetStreamInfo(&si, js, name, NULL, &jerr);
		if (s == NATS_OK && si->Cluster != NULL && si->Cluster->Leader != NULL)
			return si;
		if (si != NULL)
			jsStreamInfo_Destroy(si);
		si = NULL;
		usleep(200000);
	}
	die("stream info", s);
	return NULL;
}

int
main(int argc, char **argv)
{
	natsConnection *nc;
	jsCtx	   *js;
	natsStatus	s;

	if (argc < 4)
	{
		fprintf(stderr, "usage: lhnats stream|leader|dump|publish URLS NAME ...\n");
		return 1;
	}
	nc = connect_to(argv[2], &js);

	if (strcmp(argv[1], "stream") == 0 && argc == 6)
	{
		jsStreamConfig cfg;
		jsErrCode	jerr = 0;
		const char *subjects[1] = {argv[4]};
		jsStreamInfo *si;

		jsStreamConfig_Init(&cfg);
		cfg.Name = argv[3];
		cfg.Subjects = subjects;
		cfg.SubjectsLen = 1;
		cfg.Storage = js_FileStorage;
		cfg.Replicas = atoi(argv[5]);
		cfg.Duplicates = (int64_t) 120 * 1000 * 1000 * 1000;
		/* the meta leader may still be being elected: try for 60 s */
		for (int t = 0;; t++)
		{
			s = js_AddStream(NULL, js, &cfg, NULL, &jerr);
			if (s == NATS_OK)
				break;
			if (t >= 300)
				die("add stream", s);
			usleep(200000);
		}
		si = stream_info(js, argv[3], 300);
		jsStreamInfo_Destroy(si);
	}
	else if (strcmp(argv[1], "leader") == 0 && argc == 4)
	{
		jsStreamInfo *si = stream_info(js, argv[3], 150);

		printf("%s\n", si->Cluster->Leader);
		jsStreamInfo_Destroy(si);
	}
	else if ((strcmp(argv[1], "dump") == 0 || strcmp(argv[1], "dump-sizes") == 0) && argc == 4)
	{
		bool		sizes = strcmp(argv[1], "dump-sizes") == 0;
		jsStreamInfo *si = stream_info(js, argv[3], 150);
		uint64_t	last = si->State.LastSeq;
		uint64_t	msgs = si->State.Msgs;
		jsSubOptions so;
		natsSubscription *sub;
		jsErrCode	jerr = 0;
		uint64_t	got = 0;

		jsStreamInfo_Destroy(si);
		jsSubOptions_Init(&so);
		so.Stream = argv[3];
		so.Ordered = true;
		if (msgs > 0)
		{
			/* (a consumer leader may be being elected after a kill: 30 s) */
			for (int t = 0; (s = js_SubscribeSync(&sub, js, ">", NULL, &so, &jerr)) != NATS_OK; t++)
			{
				if (t >= 30)
					die("subscribe", s);
				sleep(1);
			}
			while (got < msgs)
			{
				natsMsg    *m;
				jsMsgMetaData *meta;
				const char *id = NULL;

				if ((s = natsSubscription_NextMsg(&m, sub, 10000)) != NATS_OK)
					die("next message", s);
				if ((s = natsMsg_GetMetaData(&meta, m)) != NATS_OK)
					die("metadata", s);
				if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) != NATS_OK)
					id = "-";
				if (sizes)
					printf("%llu %s %s %d\n", (unsigned long long) meta->Sequence.Stream,
						   natsMsg_GetSubject(m), id, natsMsg_GetDataLength(m));
				else
					printf("%llu %s %s\n", (unsigned long long) meta->Sequence.Stream,
						   natsMsg_GetSubject(m), id);
				got++;
				if (meta->Sequence.Stream >= last)
					got = msgs;
				jsMsgMetaData_Destroy(meta);
				natsMsg_Destroy(m);
			}
			natsSubscription_Destroy(sub);
		}
	}
	else if (strcmp(argv[1], "publish") == 0 && (argc == 6 || argc == 7))
	{
		long		n = atol(argv[4]);
		long		keys = atol(argv[5]);
		long		first = argc == 7 ? atol(argv[6]) : 1;
		char		subject[256],
					id[64],
					body[64];

		for (long i = first; i < first + n; i++)
		{
			jsPubOptions po;
			jsPubAck   *pa = NULL;
			jsErrCode	jerr = 0;

			jsPubOptions_Init(&po);
			snprintf(subject, sizeof(subject), "%s.k%ld", argv[3], keys > 0 ? i % keys : 0);
			snprintf(id, sizeof(id), "m%ld", i);
			snprintf(body, sizeof(body), "{\"n\": %ld}", i);
			po.MsgId = id;
			po.MaxWait = 10000;
			if ((s = js_Publish(&pa, js, subject, body, (int) strlen(body), &po, &jerr)) != NATS_OK)
				die("publish", s);
			jsPubAck_Destroy(pa);
		}
	}
	else
	{
		fprintf(stderr, "lhnats: bad arguments\n");
		return 1;
	}
	fflush(stdout);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	nats_Close();
	return 0;
}
