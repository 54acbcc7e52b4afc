/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *		Canonical lifecycles and hub.classify_transition.
 *
 * Each lifecycle (order, shipment, movement, return; LOGISTICS.md 5.2-5.5)
 * is a small directed acyclic graph of progress states plus a separate set
 * of explicit backward edges (corrections).  The graphs are written below
 * as lists of named edges, which read like the specification; the first
 * use in a backend turns them into one uint64 bitmask per state: the direct
 * successors, the transitive closure (descendants) and the correction
 * targets.  A classification is then a handful of mask tests:
 *
 *		incoming == current                      duplicate
 *		correction and incoming in back[current] advance (explicit correction)
 *		incoming in next[current]                advance (direct edge)
 *		incoming in desc[current]                advance_with_gap (forward, skipping)
 *		current in desc[incoming]                stale (an earlier state: late report)
 *		otherwise                                conflict (incomparable states)
 *
 * Terminal states are those without successors (closed, cancelled,
 * delivered of a shipment, returned, rejected, done); leaving one is stale
 * when the incoming state leads to it and a conflict otherwise.  The
 * correction flag changes nothing for a pair that is not an explicit
 * backward edge, so it can never make an arbitrary regression acceptable.
 * Overlays (on_hold, exception) are not states and are not modelled here.
 *
 * The SQL enums are mapped to state indexes by label, once per backend (and
 * again if the extension is re-created): the enum value Oids of a type are
 * looked up in pg_enum and kept in a static array, so the per-call cost is
 * a scan of at most 13 Oids.
 *
 * extension/lifecycle.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "port/pg_bitutils.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "lifecycle.h"

#define HUB_MAX_STATES 64

typedef struct LifecycleEdge
{
	const char *from;
	const char *to;
} LifecycleEdge;

typedef struct Lifecycle
{
	const char *name;			/* lifecycle name used in SQL text arguments */
	const char *typname;		/* its enum type in the extension's schema */
	const char *const *states;	/* in the enum's label order */
	int			nstates;
	const LifecycleEdge *edges; /* forward (progress) edges */
	int			nedges;
	const LifecycleEdge *back;	/* explicit corrections */
	int			nback;

	/* computed once per backend by lifecycle_init() */
	uint64		next[HUB_MAX_STATES];
	uint64		desc[HUB_MAX_STATES];
	uint64		backmask[HUB_MAX_STATES];

	/* enum value Oids by state index, for enumtypid (0 = not yet looked up) */
	Oid			enumtypid;
	Oid			enumoids[HUB_MAX_STATES];
} Lifecycle;

#define lengthof_edges(a) ((int) lengthof(a))

/* ---- 5.2 order ---- */
static const char *const order_states[] = {
	"draft", "created", "released", "allocated", "picking", "picked", "packed",
	"shipped", "in_transit", "out_for_delivery", "delivered", "closed", "cancelled"
};
static const LifecycleEdge order_edges[] = {
	{"draft", "created"}, {"created", "released"}, {"released", "allocated"},
	{"allocated", "picking"}, {"picking", "picked"}, {"picked", "packed"},
	{"packed", "shipped"}, {"shipped", "in_transit"},
	{"in_transit", "out_for_delivery"}, {"out_for_delivery", "delivered"},
	{"delivered", "closed"},
	/* cancel cutoff: before shipped */
	{"created", "cancelled"}, {"released", "cancelled"}, {"allocated", "cancelled"},
	{"picking", "cancelled"}, {"picked", "cancelled"}, {"packed", "cancelled"}
	/* shipped..out_for_delivery -> closed is reachable, hence a marked gap */
};
static const LifecycleEdge order_back[] = {
	{"allocated", "released"},	/* unreserve */
	{"picking", "allocated"}, {"picked", "allocated"},	/* unpick / short pick */
	{"packed", "picked"},		/* unpack */
	{"shipped", "packed"}		/* void_shipping / label void */
};

/* ---- 5.3 shipment ---- */
static const char *const shipment_states[] = {
	"planned", "label_created", "pickup_arrived", "picked_up", "in_transit",
	"out_for_delivery", "available_for_pickup", "delivered", "return_to_sender",
	"returned", "cancelled"
};
static const LifecycleEdge shipment_edges[] = {
	{"planned", "label_created"}, {"label_created", "pickup_arrived"},
	{"pickup_arrived", "picked_up"}, {"picked_up", "in_transit"},
	{"in_transit", "out_for_delivery"}, {"out_for_delivery", "delivered"},
	{"in_transit", "available_for_pickup"}, {"available_for_pickup", "delivered"},
	{"out_for_delivery", "available_for_pickup"},
	{"picked_up", "return_to_sender"}, {"in_transit", "return_to_sender"},
	{"out_for_delivery", "return_to_sender"},
	{"available_for_pickup", "return_to_sender"},
	{"return_to_sender", "returned"},
	{"planned", "cancelled"}, {"label_created", "cancelled"},
	{"pickup_arrived", "cancelled"}
};

/* ---- 5.4 inventory movement ---- */
static const char *const movement_states[] = {
	"planned", "waiting_upstream", "awaiting_stock", "partially_reserved",
	"reserved", "in_progress", "done", "cancelled"
};
static const LifecycleEdge movement_edges[] = {
	{"planned", "waiting_upstream"}, {"waiting_upstream", "awaiting_stock"},
	{"awaiting_stock", "partially_reserved"}, {"partially_reserved", "reserved"},
	{"reserved", "in_progress"}, {"in_progress", "done"},
	/* the skips 5.4 lists as edges of their own */
	{"planned", "awaiting_stock"}, {"awaiting_stock", "reserved"},
	{"reserved", "done"},
	/* any non-done state may be cancelled */
	{"planned", "cancelled"}, {"waiting_upstream", "cancelled"},
	{"awaiting_stock", "cancelled"}, {"partially_reserved", "cancelled"},
	{"reserved", "cancelled"}, {"in_progress", "cancelled"}
};
static const LifecycleEdge movement_back[] = {
	{"reserved", "awaiting_stock"}, {"partially_reserved", "awaiting_stock"}	/* unreserve */
};

/* ---- 5.5 return (RMA) ---- */
static const char *const return_states[] = {
	"requested", "authorized", "awaiting_item", "in_transit_back", "received",
	"inspected", "resolved", "closed", "rejected", "cancelled"
};
static const LifecycleEdge return_edges[] = {
	{"requested", "authorized"}, {"authorized", "awaiting_item"},
	{"awaiting_item", "in_transit_back"}, {"in_transit_back", "received"},
	{"received", "inspected"}, {"inspected", "resolved"}, {"resolved", "closed"},
	{"authorized", "received"},	/* dropped off, no tracked return shipment */
	{"received", "resolved"},	/* no inspection step */
	{"requested", "rejected"},
	{"requested", "cancelled"}, {"authorized", "cancelled"},
	{"awaiting_item", "cancelled"}
};

static Lifecycle lifecycles[] = {
	{.name = "order", .typname = "order_status", .states = order_states, .nstates = lengthof(order_states),
	 .edges = order_edges, .nedges = lengthof_edges(order_edges), .back = order_back, .nback = lengthof_edges(order_back)},
	{.name = "shipment", .typname = "shipment_status", .states = shipment_states, .nstates = lengthof(shipment_states),
	 .edges = shipment_edges, .nedges = lengthof_edges(shipment_edges), .back = NULL, .nback = 0},
	{.name = "movement", .typname = "movement_status", .states = movement_states, .nstates = lengthof(movement_states),
	 .edges = movement_edges, .nedges = lengthof_edges(movement_edges), .back = movement_back, .nback = lengthof_edges(movement_back)},
	{.name = "return", .typname = "return_status", .states = return_states, .nstates = lengthof(return_states),
	 .edges = return_edges, .nedges = lengthof_edges(return_edges), .back = NULL, .nback = 0}
};

#define HUB_NLIFECYCLES ((int) lengthof(lifecycles))

static const char *const kind_labels[HUB_TRANSITION_NKINDS] = {
	"duplicate", "advance", "advance_with_gap", "stale", "conflict"
};

static bool lifecycles_ready = false;

/* Oids of the hub.transition_kind labels of enum type kinds_typid */
static Oid	kinds_typid = InvalidOid;
static Oid	kind_oids[HUB_TRANSITION_NKINDS];

/*
 * state_index --- index of a state name in a lifecycle, or -1.
 */
static int
state_index(const Lifecycle *lc, const char *state)
{
	for (int i = 0; i < lc->nstates; i++)
		if (strcmp(lc->states[i], state) == 0)
			return i;
	return -1;
}

/*
 * edge_bits --- fill masks[] from a list of named edges; elog on a typo in
 * the tables above (can't happen once the tests pass).
 */
static void
edge_bits(const Lifecycle *lc, const LifecycleEdge *edges, int nedges,
		  uint64 *masks)
{
	memset(masks, 0, sizeof(uint64) * HUB_MAX_STATES);
	for (int i = 0; i < nedges; i++)
	{
		int			f = state_index(lc, edges[i].from);
		int			t = state_index(lc, edges[i].to);

		if (f < 0 || t < 0)
			elog(ERROR, "lifecycle \"%s\": edge %s -> %s names an unknown state",
				 lc->name, edges[i].from, edges[i].to);
		masks[f] |= UINT64CONST(1) << t;
	}
}

/*
 * lifecycle_init --- compute the successor, closure and correction masks of
 * every lifecycle, once per backend.  The closure is a fixpoint over the
 * successor masks (at most nstates rounds); a state reaching itself means
 * the forward graph has a cycle, which the design forbids.
 */
static void
lifecycle_init(void)
{
	if (lifecycles_ready)
		return;

	for (int l = 0; l < HUB_NLIFECYCLES; l++)
	{
		Lifecycle  *lc = &lifecycles[l];
		bool		changed = true;

		Assert(lc->nstates <= HUB_MAX_STATES);
		edge_bits(lc, lc->edges, lc->nedges, lc->next);
		edge_bits(lc, lc->back, lc->nback, lc->backmask);
		memcpy(lc->desc, lc->next, sizeof(lc->desc));
		while (changed)
		{
			changed = false;
			for (int s = 0; s < lc->nstates; s++)
			{
				uint64		d = lc->desc[s];
				uint64		rest = d;

				while (rest)
				{
					int			t = pg_rightmost_one_pos64(rest);

					rest &= rest - 1;
					d |= lc->desc[t];
				}
				if (d != lc->desc[s])
				{
					lc->desc[s] = d;
					changed = true;
				}
			}
		}
		for (int s = 0; s < lc->nstates; s++)
			if (lc->desc[s] & (UINT64CONST(1) << s))
				elog(ERROR, "lifecycle \"%s\" has a cycle through \"%s\"",
					 lc->name, lc->states[s]);
	}
	lifecycles_ready = true;
}

/*
 * classify --- the transition kind of s -> t (state indexes).
 */
static inline HubTransitionKind
classify(const Lifecycle *lc, int s, int t, bool correction)
{
	uint64		tbit = UINT64CONST(1) << t;

	if (s == t)
		return HUB_TRANSITION_DUPLICATE;
	if (correction && (lc->backmask[s] & tbit))
		return HUB_TRANSITION_ADVANCE;
	if (lc->next[s] & tbit)
		return HUB_TRANSITION_ADVANCE;
	if (lc->desc[s] & tbit)
		return HUB_TRANSITION_ADVANCE_WITH_GAP;
	if (lc->desc[t] & (UINT64CONST(1) << s))
		return HUB_TRANSITION_STALE;
	return HUB_TRANSITION_CONFLICT;
}

/*
 * find_lifecycle --- the lifecycle of a name; NULL if unknown and errorOK,
 * else ereport 22023.
 */
static Lifecycle *
find_lifecycle(const char *name, bool errorOK)
{
	lifecycle_init();
	for (int l = 0; l < HUB_NLIFECYCLES; l++)
		if (strcmp(lifecycles[l].name, name) == 0)
			return &lifecycles[l];
	if (errorOK)
		return NULL;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown lifecycle: \"%s\"", name),
			 errhint("The lifecycles are order, shipment, movement and return.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * find_state --- index of a state of lc; ereport 22023 naming the
 * lifecycle when unknown.
 */
static int
find_state(const Lifecycle *lc, const char *state)
{
	int			i = state_index(lc, state);

	if (i < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown %s state: \"%s\"", lc->name, state),
				 errhint("The states are the labels of hub.%s.", lc->typname)));
	return i;
}

bool
hub_lifecycle_state_valid(const char *lifecycle, const char *state)
{
	Lifecycle  *lc = find_lifecycle(lifecycle, true);

	return lc != NULL && state_index(lc, state) >= 0;
}

HubTransitionKind
hub_lifecycle_classify(const char *lifecycle, const char *current,
					   const char *incoming, bool correction)
{
	Lifecycle  *lc = find_lifecycle(lifecycle, false);

	return classify(lc, find_state(lc, current), find_state(lc, incoming),
					correction);
}

/*
 * enum_label_oid --- Oid of label in enum typid; elog if missing (the SQL
 * enum and the C tables disagree: a build error).
 */
static Oid
enum_label_oid(Oid typid, const char *label)
{
	Oid			oid = GetSysCacheOid2(ENUMTYPOIDNAME, Anum_pg_enum_oid,
									  ObjectIdGetDatum(typid),
									  CStringGetDatum(label));

	if (!OidIsValid(oid))
		elog(ERROR, "enum %u has no label \"%s\"", typid, label);
	return oid;
}

/*
 * schema_type --- Oid of a type in the schema of the calling function.
 */
static Oid
schema_type(FunctionCallInfo fcinfo, const char *typname)
{
	Oid			nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
	Oid			typid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
										CStringGetDatum(typname),
										ObjectIdGetDatum(nsp));

	if (!OidIsValid(typid))
		elog(ERROR, "type \"%s\" not found in the schema of the function", typname);
	return typid;
}

/*
 * load_kind_oids --- the transition_kind label Oids for the calling
 * function's schema (re-read when the extension was re-created).
 */
static void
load_kind_oids(FunctionCallInfo fcinfo)
{
	Oid			typid = schema_type(fcinfo, "transition_kind");

	if (typid == kinds_typid)
		return;
	for (int k = 0; k < HUB_TRANSITION_NKINDS; k++)
		kind_oids[k] = enum_label_oid(typid, kind_labels[k]);
	kinds_typid = typid;
}

/*
 * load_enum_oids --- the state label Oids of lc's enum type, and a check
 * that the enum has no label the C tables lack.
 */
static void
load_enum_oids(FunctionCallInfo fcinfo, Lifecycle *lc)
{
	Oid			typid = schema_type(fcinfo, lc->typname);
	CatCList   *list;
	int			nlabels;

	if (typid == lc->enumtypid)
		return;
	list = SearchSysCacheList1(ENUMTYPOIDNAME, ObjectIdGetDatum(typid));
	nlabels = list->n_members;
	ReleaseSysCacheList(list);
	if (nlabels != lc->nstates)
		elog(ERROR, "hub.%s has %d labels, the %s lifecycle %d states",
			 lc->typname, nlabels, lc->name, lc->nstates);
	for (int i = 0; i < lc->nstates; i++)
		lc->enumoids[i] = enum_label_oid(typid, lc->states[i]);
	lc->enumtypid = typid;
}

/*
 * enum_state --- state index of an enum value Oid of lc.
 */
static int
enum_state(const Lifecycle *lc, Oid value)
{
	for (int i = 0; i < lc->nstates; i++)
		if (lc->enumoids[i] == value)
			return i;
	elog(ERROR, "enum value %u is not a state of the %s lifecycle", value, lc->name);
	return -1;					/* keep compiler quiet */
}

/*
 * classify_enum --- body of the four hub.classify_transition overloads.
 * The Oid caches are checked once per FmgrInfo (fn_extra marks it done).
 */
static Datum
classify_enum(FunctionCallInfo fcinfo, int lcno)
{
	Lifecycle  *lc = &lifecycles[lcno];
	bool		correction = PG_NARGS() > 2 && !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);

	lifecycle_init();
	if (fcinfo->flinfo->fn_extra == NULL)
	{
		load_kind_oids(fcinfo);
		load_enum_oids(fcinfo, lc);
		fcinfo->flinfo->fn_extra = lc;
	}
	PG_RETURN_OID(kind_oids[classify(lc,
									 enum_state(lc, PG_GETARG_OID(0)),
									 enum_state(lc, PG_GETARG_OID(1)),
									 correction)]);
}

PG_FUNCTION_INFO_V1(hub_classify_order_transition);
PG_FUNCTION_INFO_V1(hub_classify_shipment_transition);
PG_FUNCTION_INFO_V1(hub_classify_movement_transition);
PG_FUNCTION_INFO_V1(hub_classify_return_transition);

Datum
hub_classify_order_transition(PG_FUNCTION_ARGS)
{
	return classify_enum(fcinfo, 0);
}

Datum
hub_classify_shipment_transition(PG_FUNCTION_ARGS)
{
	return classify_enum(fcinfo, 1);
}

Datum
hub_classify_movement_transition(PG_FUNCTION_ARGS)
{
	return classify_enum(fcinfo, 2);
}

Datum
hub_classify_return_transition(PG_FUNCTION_ARGS)
{
	return classify_enum(fcinfo, 3);
}

/*
 * hub._classify_transition(lifecycle text, current text, incoming text,
 * correction bool) --- the same by state names, for apply_status, which
 * keeps the states of all lifecycles in one text column.  22023 on an
 * unknown lifecycle or state.
 */
PG_FUNCTION_INFO_V1(hub_classify_transition_text);

Datum
hub_classify_transition_text(PG_FUNCTION_ARGS)
{
	char	   *lifecycle = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *current = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *incoming = text_to_cstring(PG_GETARG_TEXT_PP(2));

	load_kind_oids(fcinfo);
	PG_RETURN_OID(kind_oids[hub_lifecycle_classify(lifecycle, current, incoming,
												   PG_GETARG_BOOL(3))]);
}

/*
 * hub.lifecycle_state_valid(lifecycle text, state text) --- never errors.
 */
PG_FUNCTION_INFO_V1(hub_lifecycle_state_valid_sql);

Datum
hub_lifecycle_state_valid_sql(PG_FUNCTION_ARGS)
{
	char	   *lifecycle = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *state = text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_BOOL(hub_lifecycle_state_valid(lifecycle, state));
}

/*
 * hub.lifecycle_states(lifecycle text) --- one row per state: name,
 * ordinal (1-based, the enum order) and whether it is terminal.
 */
PG_FUNCTION_INFO_V1(hub_lifecycle_states);

Datum
hub_lifecycle_states(PG_FUNCTION_ARGS)
{
	Lifecycle  *lc = find_lifecycle(text_to_cstring(PG_GETARG_TEXT_PP(0)), false);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int s = 0; s < lc->nstates; s++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(lc->states[s]);
		values[1] = Int32GetDatum(s + 1);
		values[2] = BoolGetDatum(lc->next[s] == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * hub.lifecycle_transitions(lifecycle text) --- every edge of the graph:
 * from, to, and whether it is an explicit correction.
 */
PG_FUNCTION_INFO_V1(hub_lifecycle_transitions);

Datum
hub_lifecycle_transitions(PG_FUNCTION_ARGS)
{
	Lifecycle  *lc = find_lifecycle(text_to_cstring(PG_GETARG_TEXT_PP(0)), false);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int pass = 0; pass < 2; pass++)
	{
		const LifecycleEdge *edges = pass == 0 ? lc->edges : lc->back;
		int			n = pass == 0 ? lc->nedges : lc->nback;

		for (int i = 0; i < n; i++)
		{
			Datum		values[3];
			bool		nulls[3] = {false, false, false};

			values[0] = CStringGetTextDatum(edges[i].from);
			values[1] = CStringGetTextDatum(edges[i].to);
			values[2] = BoolGetDatum(pass == 1);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}
