/*
 * 67_trace.sql --- W3C Trace Context on inbox messages.
 *
 * Every inbox message carries a traceparent: the sender's (hub.receive's
 * argument or the payload's traceparent key), or the poll request's that
 * fetched it, or a new trace; what its processing publishes is a child
 * span of it (hub.process_inbox sets hub.inbox_traceparent with the
 * message's correlation and causation ids; the contract trigger of
 * hub.outbox reads it, extension/trace_context.c).  Events carry theirs in
 * hub.outbox.traceparent (40_outbox.sql).  The column comes after the
 * pollers' poll_request_id, so that a fresh install and an updated one have
 * the same column order.  A poller's run is a trace of its own
 * (hub.pollers.run_traceparent, set by hub._poll_claim when a run starts):
 * each page request sends it as its traceparent header, and the records of
 * its pages keep it.
 */
ALTER TABLE hub.inbox ADD COLUMN traceparent text;
COMMENT ON COLUMN hub.inbox.traceparent IS
'W3C Trace Context traceparent of the message (version 00 form): the sender''s (hub.receive''s argument, else the payload''s traceparent key), the poll request''s for a polled record, else a new trace; invalid inbound values are ignored. The events its processing publishes are child spans of it. NULL for messages received before 0.3.0.';

ALTER TABLE hub.pollers ADD COLUMN run_traceparent text;
COMMENT ON COLUMN hub.pollers.run_traceparent IS
'W3C Trace Context traceparent of the run in progress (a new trace for each run): sent as the traceparent header of every page request of the run, and kept on the inbox messages of its records.';
