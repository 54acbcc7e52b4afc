/*-------------------------------------------------------------------------
 *
 * traceparent.h
 *		W3C Trace Context (Level 1) traceparent values: the pure parser
 *		(traceparent_parse.c) and the hub's trace context of events and
 *		inbox messages (trace_context.c).
 *
 * A traceparent is "version-traceid-parentid-flags": 2, 32, 16 and 2
 * lower-case hex digits.  The hub keeps every traceparent it stores in the
 * version 00 form (55 characters), which is also what it sends.
 *
 * extension/traceparent.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LH_TRACEPARENT_H
#define LH_TRACEPARENT_H

#include "postgres.h"

#define HUB_TRACEPARENT_LEN 55		/* "00-" 32 "-" 16 "-" 2 */

/*
 * hub_traceparent_parse --- parse len bytes of s (not necessarily
 * terminated) as a traceparent.  On success writes the version 00 form,
 * with the trace id, parent id and flags of s, to out (HUB_TRACEPARENT_LEN
 * characters and a terminating NUL) and returns true.  Otherwise returns
 * false and sets *why (when why is not NULL) to a sentence saying what is
 * wrong.  Pure: no allocation, no error raised, reads nothing past s[len].
 */
extern bool hub_traceparent_parse(const char *s, size_t len, char *out, const char **why);

/*
 * hub_traceparent_make --- a new traceparent in out (HUB_TRACEPARENT_LEN + 1
 * bytes): a new random parent id (span id) under the trace id and flags of
 * parent, a valid version 00 traceparent, or, when parent is NULL, a new
 * random trace id with flags 01 (sampled).  Random bytes come from
 * pg_strong_random; elog(ERROR) if it fails.
 */
extern void hub_traceparent_make(const char *parent, char *out);

/*
 * hub_traceparent_for_event --- the traceparent of an event being
 * published (the contract check, outbox_check.c): a given one (*value not
 * *isnull) must parse (22023 otherwise) and is kept in its version 00
 * form; none given: a child of the inbox message in process (the setting
 * hub.inbox_traceparent while hub.inbox_causation_id is set, both set by
 * hub.process_inbox), else a new trace.  Sets *value, *isnull = false.
 */
extern void hub_traceparent_for_event(Datum *value, bool *isnull);

#endif							/* LH_TRACEPARENT_H */
