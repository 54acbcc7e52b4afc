/*-------------------------------------------------------------------------
 *
 * lifecycle.h
 *		Canonical lifecycles (order, shipment, movement, return) for C callers.
 *
 * The graphs themselves and their precomputed reachability masks live in
 * lifecycle.c; other files (the status mapper) only need to ask whether a
 * state name belongs to a lifecycle, and may classify a transition between
 * two state names without going through the enum types.
 *
 * extension/lifecycle.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_LIFECYCLE_H
#define HUB_LIFECYCLE_H

/* Values of hub.transition_kind, in the enum's label order. */
typedef enum HubTransitionKind
{
	HUB_TRANSITION_DUPLICATE = 0,
	HUB_TRANSITION_ADVANCE,
	HUB_TRANSITION_ADVANCE_WITH_GAP,
	HUB_TRANSITION_STALE,
	HUB_TRANSITION_CONFLICT
} HubTransitionKind;

#define HUB_TRANSITION_NKINDS 5

/* true when lifecycle names a known lifecycle and state one of its states */
extern bool hub_lifecycle_state_valid(const char *lifecycle, const char *state);

/*
 * Classify current -> incoming of the named lifecycle; ereports 22023 on an
 * unknown lifecycle or state name.
 */
extern HubTransitionKind hub_lifecycle_classify(const char *lifecycle,
												const char *current,
												const char *incoming,
												bool correction);

#endif							/* HUB_LIFECYCLE_H */
