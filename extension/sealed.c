/*-------------------------------------------------------------------------
 *
 * sealed.c
 *		Sealed secrets: endpoint credentials and Standard Webhooks signing
 *		secrets are kept in hub._endpoint_secrets only as ciphertext, under
 *		a key that lives in a file outside the database.
 *
 * The design follows pgsodium's server key: the key is read once, by the
 * postmaster while it preloads the library, from the file named by
 * logistics_hub.secret_key_file (PGC_POSTMASTER), and every server process
 * inherits it in memory (sodium_malloc: guard pages, read-only once
 * loaded).  No SQL function returns it or anything derived from it except
 * its key id.  The file must be a regular file of exactly 32 bytes, owned
 * by the server's operating-system user and neither group- nor
 * world-accessible; otherwise it is refused with a WARNING at start and
 * the server runs without a key: setting a secret fails (55000) and the
 * dispatchers pause the endpoints whose secrets they cannot open.
 * logistics_hub.previous_secret_key_files names older keys that may still
 * open secrets (never seal them) while hub.reseal_secrets() re-encrypts
 * everything under the current key.
 *
 * A sealed value is
 *
 *     version (1 byte, 1) || key id (8) || nonce (24) || ciphertext || tag (16)
 *
 * made by XChaCha20-Poly1305 (IETF AEAD) with a random nonce under a
 * subkey derived from the key (crypto_kdf, context "lhubseal").  The key id
 * is the first 8 bytes of a BLAKE2b hash keyed with the key, so the wrong
 * key is recognised without trying it and the id tells nothing about the
 * key.  The additional authenticated data is the header (version and key
 * id) and "<endpoint id>/<column name>": a ciphertext copied to another
 * endpoint or column does not open.
 *
 * Sealing happens in the SQL functions that set secrets (hub._seal, called
 * by hub.create_endpoint and the setters; the text arrives as an argument
 * and is never stored or logged); opening only in C: the dispatcher's
 * endpoint_load (hub_secret_open), the rotation's duplicate check and
 * hub._reseal, none of which returns plain text to SQL.
 *
 * extension/sealed.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "sealed.h"

#define SEAL_VERSION	1
#define SEAL_KEY_BYTES	32
#define SEAL_ID_BYTES	8
#define SEAL_NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define SEAL_TAG_BYTES	crypto_aead_xchacha20poly1305_ietf_ABYTES
#define SEAL_HEADER		(1 + SEAL_ID_BYTES)
#define SEAL_OVERHEAD	(SEAL_HEADER + SEAL_NONCE_BYTES + SEAL_TAG_BYTES)
/* the current key and up to three previous ones */
#define SEAL_MAX_KEYS	4
/* "<int32>/<column>", columns being short names */
#define SEAL_AAD_MAX	(SEAL_HEADER + 12 + NAMEDATALEN)

typedef struct SealKey
{
	unsigned char id[SEAL_ID_BYTES];
	unsigned char key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
} SealKey;

/* settings */
static char *seal_key_file = NULL;
static char *seal_previous_key_files = NULL;

/* the keys, set in the postmaster and inherited by every process */
static SealKey *seal_keys = NULL;
static int	seal_nkeys = 0;
static int	seal_current = -1;

/* why there is no current key, as sentences for error details */
static char seal_problem[MAXPGPATH + 200] =
"The logistics_hub library was not loaded through shared_preload_libraries.";

static const char *const seal_columns[] = {
	"auth_secret", "oauth2_client_id", "oauth2_client_secret", "signing_secrets"
};

/* seal_hex_id --- a key id as 16 hex digits (out holds 17 bytes) */
static void
seal_hex_id(const unsigned char *id, char *out)
{
	sodium_bin2hex(out, SEAL_ID_BYTES * 2 + 1, id, SEAL_ID_BYTES);
}

/*
 * seal_read_key --- read a key file into master.  False, with why set to a
 * sentence, when the file cannot be opened, is not a regular file of 32
 * bytes, is owned by another user or is accessible to group or others.
 */
static bool
seal_read_key(const char *path, unsigned char *master, char *why, size_t whylen)
{
	struct stat st;
	int			fd;
	ssize_t		n;

	fd = open(path, O_RDONLY | O_CLOEXEC | PG_BINARY, 0);
	if (fd < 0)
	{
		snprintf(why, whylen, "It could not be opened: %s.", strerror(errno));
		return false;
	}
	if (fstat(fd, &st) != 0)
	{
		snprintf(why, whylen, "It could not be examined: %s.", strerror(errno));
		close(fd);
		return false;
	}
	if (!S_ISREG(st.st_mode))
		snprintf(why, whylen, "It is not a regular file.");
	else if (st.st_uid != geteuid())
		snprintf(why, whylen, "It belongs to user id %u, not to the server's operating-system user (%u).",
				 (unsigned) st.st_uid, (unsigned) geteuid());
	else if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
		snprintf(why, whylen, "Its permissions are %04o: group and others must have none (chmod 600).",
				 (unsigned) (st.st_mode & 07777));
	else if (st.st_size != SEAL_KEY_BYTES)
		snprintf(why, whylen, "It holds %lld bytes, not %d.", (long long) st.st_size, SEAL_KEY_BYTES);
	else if ((n = read(fd, master, SEAL_KEY_BYTES)) != SEAL_KEY_BYTES)
		snprintf(why, whylen, "It could not be read: %s.", n < 0 ? strerror(errno) : "short read");
	else
	{
		close(fd);
		return true;
	}
	close(fd);
	sodium_memzero(master, SEAL_KEY_BYTES);
	return false;
}

/*
 * seal_add_key --- load one key file (in the postmaster, while preloading)
 * and return its slot; -1 with a WARNING naming the file and why when it
 * is refused.  A key already loaded under another name keeps its slot.
 */
static int
seal_add_key(const char *path, const char *setting)
{
	unsigned char master[SEAL_KEY_BYTES];
	unsigned char hash[crypto_generichash_BYTES_MIN];
	char		why[MAXPGPATH];
	char		hex[SEAL_ID_BYTES * 2 + 1];
	SealKey    *k;

	if (!seal_read_key(path, master, why, sizeof(why)))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("secret key file \"%s\" named by %s is not used", path, setting),
				 errdetail("%s", why),
				 errhint("The file must hold exactly 32 random bytes, belong to the server's operating-system user and have mode 0600 or 0400. Endpoints whose secrets need this key are paused.")));
		if (seal_current < 0 && strcmp(setting, "logistics_hub.secret_key_file") == 0)
			snprintf(seal_problem, sizeof(seal_problem), "The key file \"%s\" is not used. %s", path, why);
		return -1;
	}
	if (seal_nkeys >= SEAL_MAX_KEYS)
	{
		sodium_memzero(master, sizeof(master));
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("secret key file \"%s\" is not used", path),
				 errdetail("At most %d secret keys are loaded.", SEAL_MAX_KEYS)));
		return -1;
	}
	crypto_generichash(hash, sizeof(hash), (const unsigned char *) "logistics_hub key id", 20,
					   master, sizeof(master));
	for (int i = 0; i < seal_nkeys; i++)
		if (memcmp(seal_keys[i].id, hash, SEAL_ID_BYTES) == 0)
		{
			sodium_memzero(master, sizeof(master));
			return i;
		}
	k = &seal_keys[seal_nkeys];
	memcpy(k->id, hash, SEAL_ID_BYTES);
	crypto_kdf_derive_from_key(k->key, sizeof(k->key), 1, "lhubseal", master);
	sodium_memzero(master, sizeof(master));
	seal_hex_id(k->id, hex);
	ereport(LOG,
			(errmsg("logistics_hub secret key %s loaded from \"%s\" (%s)", hex, path, setting)));
	return seal_nkeys++;
}

/* seal_load_keys --- read the current and previous keys, in the postmaster */
static void
seal_load_keys(void)
{
	char	   *raw;
	List	   *files = NIL;
	ListCell   *lc;

	if (sodium_init() < 0 ||
		(seal_keys = sodium_malloc(sizeof(SealKey) * SEAL_MAX_KEYS)) == NULL)
	{
		snprintf(seal_problem, sizeof(seal_problem), "libsodium could not be initialised.");
		ereport(WARNING, (errmsg("libsodium could not be initialised: no secret key is loaded")));
		return;
	}
	if (seal_key_file == NULL || seal_key_file[0] == '\0')
		snprintf(seal_problem, sizeof(seal_problem), "logistics_hub.secret_key_file is not set.");
	else
	{
		seal_current = seal_add_key(seal_key_file, "logistics_hub.secret_key_file");
	}
	raw = pstrdup(seal_previous_key_files ? seal_previous_key_files : "");
	if (!SplitDirectoriesString(raw, ',', &files))
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("invalid list syntax in logistics_hub.previous_secret_key_files: no previous key is loaded")));
	else
		foreach(lc, files)
			(void) seal_add_key((char *) lfirst(lc), "logistics_hub.previous_secret_key_files");
	sodium_mprotect_readonly(seal_keys);
}

/* hub_sealed_define_gucs --- from _PG_init; loads the keys while preloading */
void
hub_sealed_define_gucs(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomStringVariable("logistics_hub.secret_key_file",
							   "File holding the 32-byte key that seals endpoint secrets.",
							   "Read once at server start; it must belong to the server's user with mode 0600. A relative name is taken from the data directory.",
							   &seal_key_file, "", PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("logistics_hub.previous_secret_key_files",
							   "Comma-separated files of earlier keys that may still open secrets, during a key rotation.",
							   "They never seal; hub.reseal_secrets() re-encrypts every secret under the current key.",
							   &seal_previous_key_files, "", PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	if (!IsBinaryUpgrade)
		seal_load_keys();
}

/* ---------------------------------------------------------------- sealing */

/* seal_check_column --- 22023 unless column is a secret column */
static void
seal_check_column(const char *column)
{
	for (int i = 0; i < (int) lengthof(seal_columns); i++)
		if (strcmp(column, seal_columns[i]) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("\"%s\" is not a secret column", column)));
}

/* the additional authenticated data: header, then "<endpoint id>/<column>" */
static size_t
seal_aad(unsigned char *aad, const unsigned char *header, int32 endpoint_id, const char *column)
{
	int			n;

	memcpy(aad, header, SEAL_HEADER);
	n = snprintf((char *) aad + SEAL_HEADER, SEAL_AAD_MAX - SEAL_HEADER, "%d/%s", endpoint_id, column);
	return SEAL_HEADER + Min(n, SEAL_AAD_MAX - SEAL_HEADER - 1);
}

/* seal_find_key --- the loaded key with this id, or NULL */
static const SealKey *
seal_find_key(const unsigned char *id)
{
	for (int i = 0; i < seal_nkeys; i++)
		if (memcmp(seal_keys[i].id, id, SEAL_ID_BYTES) == 0)
			return &seal_keys[i];
	return NULL;
}

/*
 * seal_value --- the sealed form of len bytes of plain text for an
 * endpoint's column, under the current key; 55000 when there is none.
 */
static bytea *
seal_value(int32 endpoint_id, const char *column, const char *plain, size_t len)
{
	const SealKey *k;
	bytea	   *out;
	unsigned char *p;
	unsigned char aad[SEAL_AAD_MAX];
	size_t		aadlen;
	unsigned long long clen;

	if (seal_current < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no secret key is loaded, so secrets cannot be stored"),
				 errdetail("%s", seal_problem),
				 errhint("Set logistics_hub.secret_key_file to a file of 32 random bytes that only the server's operating-system user can read, and restart the server.")));
	k = &seal_keys[seal_current];
	out = palloc(VARHDRSZ + SEAL_OVERHEAD + len);
	SET_VARSIZE(out, VARHDRSZ + SEAL_OVERHEAD + len);
	p = (unsigned char *) VARDATA(out);
	p[0] = SEAL_VERSION;
	memcpy(p + 1, k->id, SEAL_ID_BYTES);
	randombytes_buf(p + SEAL_HEADER, SEAL_NONCE_BYTES);
	aadlen = seal_aad(aad, p, endpoint_id, column);
	crypto_aead_xchacha20poly1305_ietf_encrypt(p + SEAL_HEADER + SEAL_NONCE_BYTES, &clen,
											   (const unsigned char *) plain, len,
											   aad, aadlen, NULL, p + SEAL_HEADER, k->key);
	Assert(clen == len + SEAL_TAG_BYTES);
	return out;
}

/* see sealed.h */
char *
hub_secret_open(int32 endpoint_id, const char *column, const bytea *sealed, char **why)
{
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(sealed);
	size_t		len = VARSIZE_ANY_EXHDR(sealed);
	const SealKey *k;
	unsigned char aad[SEAL_AAD_MAX];
	size_t		aadlen;
	unsigned char *plain;
	unsigned long long plen;
	char		hex[SEAL_ID_BYTES * 2 + 1];

	if (len < SEAL_OVERHEAD || p[0] != SEAL_VERSION)
	{
		*why = pstrdup("it is not a sealed value");
		return NULL;
	}
	k = seal_find_key(p + 1);
	if (k == NULL)
	{
		seal_hex_id(p + 1, hex);
		if (seal_nkeys == 0)
			*why = psprintf("no secret key is loaded (%s)", seal_problem);
		else
			*why = psprintf("it is sealed with key %s, which is not loaded", hex);
		return NULL;
	}
	aadlen = seal_aad(aad, p, endpoint_id, column);
	plain = palloc(len - SEAL_OVERHEAD + 1);
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &plen, NULL,
												   p + SEAL_HEADER + SEAL_NONCE_BYTES,
												   len - SEAL_HEADER - SEAL_NONCE_BYTES,
												   aad, aadlen, p + SEAL_HEADER, k->key) != 0)
	{
		pfree(plain);
		*why = pstrdup("it fails authentication: it was altered, or sealed for another endpoint or column");
		return NULL;
	}
	plain[plen] = '\0';
	return (char *) plain;
}

/* free an opened secret, wiping it first */
static void
seal_free(char *plain)
{
	sodium_memzero(plain, strlen(plain));
	pfree(plain);
}

/*
 * hub_seal --- SQL hub._seal(endpoint_id, column, secret): the sealed form
 * of a secret for that endpoint's column.  55000 without a current key,
 * 22023 for an unknown column.  Never shows the secret.
 */
PG_FUNCTION_INFO_V1(hub_seal);
Datum
hub_seal(PG_FUNCTION_ARGS)
{
	int32		endpoint_id = PG_GETARG_INT32(0);
	char	   *column = text_to_cstring(PG_GETARG_TEXT_PP(1));
	text	   *secret = PG_GETARG_TEXT_PP(2);

	seal_check_column(column);
	PG_RETURN_BYTEA_P(seal_value(endpoint_id, column, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret)));
}

/*
 * hub_seal_signing_secret --- SQL hub._seal_signing_secret(endpoint_id,
 * secret, previous bytea[]): previous with the secret sealed in front and
 * any earlier copy of the same secret taken out (values that do not open
 * are kept as they are).  55000 without a current key.
 */
PG_FUNCTION_INFO_V1(hub_seal_signing_secret);
Datum
hub_seal_signing_secret(PG_FUNCTION_ARGS)
{
	int32		endpoint_id = PG_GETARG_INT32(0);
	text	   *secret = PG_GETARG_TEXT_PP(1);
	ArrayType  *previous = PG_GETARG_ARRAYTYPE_P(2);
	const char *s = VARDATA_ANY(secret);
	size_t		slen = VARSIZE_ANY_EXHDR(secret);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	Datum	   *out;
	int			k = 0;

	deconstruct_array(previous, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	out = palloc(sizeof(Datum) * (n + 1));
	out[k++] = PointerGetDatum(seal_value(endpoint_id, "signing_secrets", s, slen));
	for (int i = 0; i < n; i++)
	{
		char	   *why;
		char	   *plain;
		bool		same;

		if (nulls[i])
			continue;
		plain = hub_secret_open(endpoint_id, "signing_secrets", DatumGetByteaPP(elems[i]), &why);
		same = plain != NULL && strlen(plain) == slen && memcmp(plain, s, slen) == 0;
		if (plain != NULL)
			seal_free(plain);
		if (!same)
			out[k++] = elems[i];
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(out, k, BYTEAOID, -1, false, TYPALIGN_INT));
}

/*
 * hub_reseal --- SQL hub._reseal(endpoint_id, column, sealed): the value
 * sealed under the current key (itself when it already is).  55000 when
 * there is no current key or the value cannot be opened, naming the
 * endpoint id, the column and why, never the secret.
 */
PG_FUNCTION_INFO_V1(hub_reseal);
Datum
hub_reseal(PG_FUNCTION_ARGS)
{
	int32		endpoint_id = PG_GETARG_INT32(0);
	char	   *column = text_to_cstring(PG_GETARG_TEXT_PP(1));
	bytea	   *sealed = PG_GETARG_BYTEA_PP(2);
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(sealed);
	char	   *why;
	char	   *plain;
	bytea	   *out;

	seal_check_column(column);
	if (seal_current < 0)
		(void) seal_value(endpoint_id, column, "", 0);	/* raises the error */
	if (VARSIZE_ANY_EXHDR(sealed) >= SEAL_OVERHEAD && p[0] == SEAL_VERSION &&
		memcmp(p + 1, seal_keys[seal_current].id, SEAL_ID_BYTES) == 0)
		PG_RETURN_BYTEA_P(sealed);
	plain = hub_secret_open(endpoint_id, column, sealed, &why);
	if (plain == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s of endpoint %d cannot be resealed", column, endpoint_id),
				 errdetail("The value cannot be opened: %s.", why),
				 errhint("Name the file of the key it was sealed with in logistics_hub.previous_secret_key_files and restart the server, or set the secret again.")));
	out = seal_value(endpoint_id, column, plain, strlen(plain));
	seal_free(plain);
	PG_RETURN_BYTEA_P(out);
}

/*
 * hub_secret_keys --- SQL hub.secret_keys(): the id of every key loaded at
 * server start and whether it is the current one (the one that seals).
 * No rows when no key is loaded.
 */
PG_FUNCTION_INFO_V1(hub_secret_keys);
Datum
hub_secret_keys(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < seal_nkeys; i++)
	{
		char		hex[SEAL_ID_BYTES * 2 + 1];
		Datum		values[2];
		bool		nulls[2] = {false, false};

		seal_hex_id(seal_keys[i].id, hex);
		values[0] = CStringGetTextDatum(hex);
		values[1] = BoolGetDatum(i == seal_current);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
