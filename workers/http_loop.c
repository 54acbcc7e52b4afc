/*-------------------------------------------------------------------------
 *
 * http_loop.c
 *		One libcurl multi handle a process, its sockets in an epoll set that
 *		the worker's WaitEventSet watches with the latch and postmaster
 *		death: transfers never block, they are only driven.
 *
 * libcurl tells which sockets to watch (on_socket) and when its next
 * timeout falls (on_timer); the worker's loop waits on its WaitEventSet
 * until a socket is ready, the latch is set or hub_loop_deadline passes,
 * then calls hub_loop_socket_ready / hub_loop_run_timer and
 * hub_loop_collect, which hands every finished transfer to its owner: a
 * token request to http_oauth2.c, a request to send_queue.c.  libcurl is
 * driven with every signal blocked, so that a resolver thread it starts
 * inherits a fully blocked mask and PostgreSQL's handlers only ever run on
 * this thread.  The transfers started count toward
 * logistics_hub.max_in_flight (hub_loop_in_flight), and so do the requests
 * of the other transports (hub_loop_count_in_flight, transport.h), whose
 * own descriptors share the epoll set (hub_loop_watch: a ready one is
 * handed to its transport instead of libcurl) and whose timeouts share
 * the loop's deadline.
 *
 * workers/http_loop.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <signal.h>

#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#include "http.h"
#include "hub_workers.h"
#include "transport.h"

#define MAX_EPOLL_EVENTS 64

static CURLM *multi = NULL;
static int	epoll_fd = -1;
static TimestampTz curl_deadline = 0;	/* 0: no timer */
static int	in_flight = 0;

/* descriptors of the other transports in the epoll set (few: one an endpoint) */
typedef struct HubWatch
{
	int			fd;
	HubWatchFn	ready;
	void	   *arg;
} HubWatch;

static HubWatch *watches = NULL;
static int	nwatches = 0;
static int	watches_cap = 0;

static HubWatch *
watch_find(int fd)
{
	for (int i = 0; i < nwatches; i++)
		if (watches[i].fd == fd)
			return &watches[i];
	return NULL;
}

static int
on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 &&
		epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev) != 0)
		return -1;
	return 0;
}

static int
on_timer(CURLM *m, long timeout_ms, void *userp)
{
	curl_deadline = timeout_ms < 0 ? 0 :
		GetCurrentTimestamp() + (int64) timeout_ms * 1000;
	return 0;
}

/*
 * Drive libcurl with every signal blocked, so that a resolver thread it
 * starts inherits a fully blocked mask and PostgreSQL's handlers only ever
 * run on this thread.
 */
static void
drive(curl_socket_t fd, int flags)
{
	int			running;
	sigset_t	all,
				old;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	curl_multi_socket_action(multi, fd, flags, &running);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void
loop_cleanup(int code, Datum arg)
{
	if (multi == NULL)
		return;
	hub_transports_abort_all();
	hub_oauth2_abort_all();
	curl_multi_cleanup(multi);
	multi = NULL;
}

/*
 * hub_loop_init --- libcurl, the multi handle and the epoll set, whose fd
 * goes into wes; raises when they cannot be set up.
 */
void
hub_loop_init(WaitEventSet *wes)
{
	hub_http_init();
	multi = curl_multi_init();
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (multi == NULL || epoll_fd < 0)
		elog(ERROR, "could not set up libcurl multi handle: %m");
	on_proc_exit(loop_cleanup, 0);
	if (curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) Max(hub_max_in_flight, 16)) != CURLM_OK)
		elog(ERROR, "could not set up the libcurl multi handle");
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, epoll_fd, NULL, NULL);
}

/* hub_loop_start --- start a prepared transfer; false with *error when libcurl refuses */
bool
hub_loop_start(CURL *easy, char **error)
{
	CURLMcode	mrc = curl_multi_add_handle(multi, easy);

	if (mrc != CURLM_OK)
	{
		*error = psprintf("could not start the transfer: %s", curl_multi_strerror(mrc));
		return false;
	}
	in_flight++;
	return true;
}

/* hub_loop_stop --- take a started transfer off the loop (finished or not) */
void
hub_loop_stop(CURL *easy)
{
	curl_multi_remove_handle(multi, easy);
	in_flight--;
}

/* hub_loop_in_flight --- transfers started and not stopped */
int
hub_loop_in_flight(void)
{
	return in_flight;
}

/* hub_loop_count_in_flight --- a request of another transport started (1) or ended (-1) */
void
hub_loop_count_in_flight(int delta)
{
	in_flight += delta;
}

/*
 * hub_loop_watch --- put fd of another transport in the epoll set (or
 * change the events watched): ready(fd, events, arg) is called from
 * hub_loop_socket_ready when it is.  False (with errno) when epoll refuses.
 */
bool
hub_loop_watch(int fd, uint32 epoll_events, HubWatchFn ready, void *arg)
{
	struct epoll_event ev;
	HubWatch   *w = watch_find(fd);

	memset(&ev, 0, sizeof(ev));
	ev.events = epoll_events;
	ev.data.fd = fd;
	if (w != NULL)
	{
		if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev) != 0)
			return false;
		w->ready = ready;
		w->arg = arg;
		return true;
	}
	if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
		return false;
	if (nwatches == watches_cap)
	{
		watches_cap = Max(8, watches_cap * 2);
		watches = watches == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(HubWatch) * watches_cap) :
			repalloc(watches, sizeof(HubWatch) * watches_cap);
	}
	watches[nwatches].fd = fd;
	watches[nwatches].ready = ready;
	watches[nwatches].arg = arg;
	nwatches++;
	return true;
}

/* hub_loop_unwatch --- take fd out of the epoll set (before it is closed) */
void
hub_loop_unwatch(int fd)
{
	HubWatch   *w = watch_find(fd);

	if (w == NULL)
		return;
	(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL);
	*w = watches[--nwatches];
}

/* hub_loop_deadline --- when libcurl's timer or a transport's timeout falls due, 0: none */
TimestampTz
hub_loop_deadline(void)
{
	TimestampTz t = hub_transports_deadline();

	if (curl_deadline != 0 && (t == 0 || curl_deadline < t))
		t = curl_deadline;
	return t;
}

/* hub_loop_run_timer --- drive libcurl's timeouts and the transports' if they are due */
void
hub_loop_run_timer(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (curl_deadline != 0 && curl_deadline <= now)
	{
		curl_deadline = 0;
		drive(CURL_SOCKET_TIMEOUT, 0);
	}
	hub_transports_run_timers(now);
}

/* hub_loop_socket_ready --- the epoll set is readable: drive every ready socket */
void
hub_loop_socket_ready(void)
{
	struct epoll_event ev[MAX_EPOLL_EVENTS];
	int			n;

	while ((n = epoll_wait(epoll_fd, ev, MAX_EPOLL_EVENTS, 0)) > 0)
	{
		for (int k = 0; k < n; k++)
		{
			int			flags = 0;
			HubWatch   *w = watch_find(ev[k].data.fd);

			if (w != NULL)
			{
				w->ready(w->fd, ev[k].events, w->arg);
				continue;
			}

			if (ev[k].events & (EPOLLIN | EPOLLHUP))
				flags |= CURL_CSELECT_IN;
			if (ev[k].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (ev[k].events & EPOLLERR)
				flags |= CURL_CSELECT_ERR;
			drive(ev[k].data.fd, flags);
		}
		if (n < MAX_EPOLL_EVENTS)
			break;
	}
}

/* hub_loop_collect --- hand every finished transfer to its owner */
void
hub_loop_collect(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		void	   *priv = NULL;
		CURLcode	rc = msg->data.result;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &priv);
		if (hub_oauth2_collect(priv, rc))
			continue;
		hub_send_finished((HubRequest *) priv, rc);
	}
}
