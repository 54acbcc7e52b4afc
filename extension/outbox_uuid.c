/*-------------------------------------------------------------------------
 *
 * outbox_uuid.c
 *		hub._uuid_v7(): time-ordered event ids (RFC 9562 version 7).
 *
 * An event id is the receivers' idempotency key; it must be unique, not
 * secret.  A random (version 4) id scatters the inserts of hub.outbox's
 * primary key over the whole index, which cost the publisher about a
 * quarter of its rate against an identity key; a version 7 id starts with
 * the Unix time in milliseconds, so new keys land at the right edge of the
 * index like an identity's.  The 12 bits after the version carry the
 * sub-millisecond part of the clock (RFC 9562 method 3), so ids made by one
 * backend sort in the order they were made (clock permitting); the last 62
 * bits come from the backend's PRNG, which PostgreSQL seeds from a strong
 * random source at backend start.
 *
 * extension/outbox_uuid.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "fmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/*
 * hub_uuid_v7 --- SQL hub._uuid_v7(): a new version 7 UUID.  Never fails.
 */
PG_FUNCTION_INFO_V1(hub_uuid_v7);
Datum
hub_uuid_v7(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *uuid = palloc(UUID_LEN);
	TimestampTz now = GetCurrentTimestamp();
	int64		unix_us = now + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	uint64		ms = (uint64) (unix_us / 1000);
	uint32		sub_ms = (uint32) ((unix_us % 1000) * 4096 / 1000);	/* 12 bits */
	uint64		rnd = pg_prng_uint64(&pg_global_prng_state);
	int			i;

	for (i = 0; i < 6; i++)
		uuid->data[i] = (unsigned char) (ms >> (40 - 8 * i));
	uuid->data[6] = (unsigned char) (0x70 | ((sub_ms >> 8) & 0x0F));	/* version 7 */
	uuid->data[7] = (unsigned char) (sub_ms & 0xFF);
	uuid->data[8] = (unsigned char) (0x80 | ((rnd >> 56) & 0x3F));	/* variant 10 */
	for (i = 9; i < 16; i++)
		uuid->data[i] = (unsigned char) (rnd >> (8 * (15 - i)));
	PG_RETURN_UUID_P(uuid);
}
