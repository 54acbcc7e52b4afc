/*
 * curl_multi_post.c --- the push benchmark's libcurl floor: N POSTs of one
 * body over C kept-alive connections with libcurl's multi interface and
 * nothing else (no database, no signing, no bookkeeping), as fast as they
 * go.  Prints requests/s.  Used by push_http.sh next to wrk: wrk shows what
 * the loopback and nginx allow, this what libcurl itself costs a request.
 *
 *   curl_multi_post URL CONNECTIONS REQUESTS BODY_FILE
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t
discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	(void) ptr;
	(void) userdata;
	return size * nmemb;
}

int
main(int argc, char **argv)
{
	static char body[65536];
	int			conns, total, started = 0, done = 0, failed = 0, running;
	size_t		len;
	FILE	   *f;
	CURLM	   *multi;
	struct curl_slist *headers;
	struct timespec t0, t1;

	if (argc != 5 || (conns = atoi(argv[2])) < 1 || (total = atoi(argv[3])) < 1)
	{
		fprintf(stderr, "usage: %s URL CONNECTIONS REQUESTS BODY_FILE\n", argv[0]);
		return 2;
	}
	if ((f = fopen(argv[4], "rb")) == NULL)
	{
		perror(argv[4]);
		return 2;
	}
	len = fread(body, 1, sizeof(body) - 1, f);
	fclose(f);
	body[len] = '\0';

	curl_global_init(CURL_GLOBAL_DEFAULT);
	multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) conns);
	headers = curl_slist_append(NULL, "Content-Type: application/json");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < conns && started < total; i++, started++)
	{
		CURL	   *easy = curl_easy_init();

		curl_easy_setopt(easy, CURLOPT_URL, argv[1]);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
		curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
		curl_multi_add_handle(multi, easy);
	}
	while (done < total)
	{
		CURLMsg    *msg;
		int			queued;

		curl_multi_perform(multi, &running);
		while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
		{
			CURL	   *easy = msg->easy_handle;
			long		status = 0;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
			if (msg->data.result != CURLE_OK || status / 100 != 2)
				failed++;
			done++;
			curl_multi_remove_handle(multi, easy);
			if (started < total)
			{
				started++;
				curl_multi_add_handle(multi, easy);	/* same handle: its connection is reused */
			}
			else
				curl_easy_cleanup(easy);
		}
		if (done < total)
			curl_multi_poll(multi, NULL, 0, 1000, NULL);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.0f\n", total / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
	if (failed > 0)
		fprintf(stderr, "%d of %d requests failed\n", failed, total);
	curl_slist_free_all(headers);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return failed > 0;
}
