/*-------------------------------------------------------------------------
 *
 * outbox_event_id.c
 *		Event ids that sort by publishing transaction: hub._event_id(),
 *		hub._event_id_floor(xid8) and hub._event_id_ceiling(xid8).
 *
 * An event id is the receivers' idempotency key; it must be unique, not
 * secret.  Routing needs the events whose transaction id is at or above a
 * watermark (sequence numbers commit out of order; see 40_outbox.sql), and
 * a second index on hub.outbox for that cost the publisher about a fifth
 * of its rate against a plain INSERT.  So the id itself leads with the
 * publishing transaction's 64-bit id (xid8): the primary key then serves
 * the routing range scan, and new ids land at the right edge of the index
 * like an identity's.  The id is a well-formed RFC 9562 UUID of version 8
 * (custom layout), big-endian so that uuid ordering is transaction order:
 *
 *   bits   0..47   xid8 bits 63..16
 *   bits  48..51   version 8
 *   bits  52..63   xid8 bits 15..4
 *   bits  64..65   variant 10
 *   bits  66..69   xid8 bits 3..0
 *   bits  70..101  per-backend counter (insertion order within a transaction)
 *   bits 102..127  random
 *
 * A transaction runs in one backend and its xid is never reused, so
 * (xid, counter) is unique; the random bits only make ids harder to guess.
 * The contract trigger accepts an id only when it carries the inserting
 * transaction's xid (extension/outbox_check.c).
 *
 * extension/outbox_event_id.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "utils/uuid.h"
#include "utils/xid8.h"

#include "outbox.h"

static uint32 event_counter = 0;

/*
 * make_event_id --- fill uuid from a transaction id, counter and random bits.
 */
static void
make_event_id(pg_uuid_t *uuid, uint64 xid, uint32 counter, uint32 rnd)
{
	uint64		tail = ((uint64) (counter & 0x3FFFFFFF) << 26) | (rnd & 0x3FFFFFF);
	int			i;

	for (i = 0; i < 6; i++)
		uuid->data[i] = (unsigned char) (xid >> (56 - 8 * i));
	uuid->data[6] = (unsigned char) (0x80 | ((xid >> 12) & 0x0F));
	uuid->data[7] = (unsigned char) ((xid >> 4) & 0xFF);
	uuid->data[8] = (unsigned char) (0x80 | ((xid & 0x0F) << 2) | ((counter >> 30) & 0x03));
	for (i = 0; i < 7; i++)
		uuid->data[9 + i] = (unsigned char) (tail >> (48 - 8 * i));
}

/*
 * hub_event_id_xid --- the transaction id an event id carries, or false when
 * the uuid is not of our layout (version 8, variant 10).
 */
bool
hub_event_id_xid(const pg_uuid_t *uuid, uint64 *xid)
{
	uint64		x = 0;
	int			i;

	if ((uuid->data[6] & 0xF0) != 0x80 || (uuid->data[8] & 0xC0) != 0x80)
		return false;
	for (i = 0; i < 6; i++)
		x = (x << 8) | uuid->data[i];
	x = (x << 4) | (uuid->data[6] & 0x0F);
	x = (x << 8) | uuid->data[7];
	x = (x << 4) | ((uuid->data[8] >> 2) & 0x0F);
	*xid = x;
	return true;
}

/*
 * hub_event_id --- SQL hub._event_id(): a new event id for the current
 * transaction (assigns it a transaction id if it has none yet).
 */
PG_FUNCTION_INFO_V1(hub_event_id);
Datum
hub_event_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *uuid = palloc(UUID_LEN);

	make_event_id(uuid, U64FromFullTransactionId(GetTopFullTransactionId()),
				  event_counter++, (uint32) pg_prng_uint64(&pg_global_prng_state));
	PG_RETURN_UUID_P(uuid);
}

/*
 * hub_event_id_ceiling --- SQL hub._event_id_ceiling(xid8): the highest
 * event id a transaction with that id can have.
 */
PG_FUNCTION_INFO_V1(hub_event_id_ceiling);
Datum
hub_event_id_ceiling(PG_FUNCTION_ARGS)
{
	FullTransactionId xid = PG_GETARG_FULLTRANSACTIONID(0);
	pg_uuid_t  *uuid = palloc(UUID_LEN);

	make_event_id(uuid, U64FromFullTransactionId(xid), 0xFFFFFFFF, 0xFFFFFFFF);
	PG_RETURN_UUID_P(uuid);
}

/*
 * hub_event_id_floor --- SQL hub._event_id_floor(xid8): the lowest event id
 * a transaction with that id (or a later one) can have.
 */
PG_FUNCTION_INFO_V1(hub_event_id_floor);
Datum
hub_event_id_floor(PG_FUNCTION_ARGS)
{
	FullTransactionId xid = PG_GETARG_FULLTRANSACTIONID(0);
	pg_uuid_t  *uuid = palloc(UUID_LEN);

	make_event_id(uuid, U64FromFullTransactionId(xid), 0, 0);
	PG_RETURN_UUID_P(uuid);
}

/*
 * hub_event_xid --- SQL hub._event_xid(uuid): the publishing transaction of
 * an event id (NULL for a uuid not of our layout).  Routing asks whether
 * it had ended in the routing snapshot (pg_visible_in_snapshot), so that an
 * event committed after that snapshot is left for the next pass rather
 * than routed twice.
 */
PG_FUNCTION_INFO_V1(hub_event_xid);
Datum
hub_event_xid(PG_FUNCTION_ARGS)
{
	uint64		xid;

	if (!hub_event_id_xid(PG_GETARG_UUID_P(0), &xid))
		PG_RETURN_NULL();		/* not of our layout: the outbox refuses those */
	PG_RETURN_FULLTRANSACTIONID(FullTransactionIdFromU64(xid));
}
