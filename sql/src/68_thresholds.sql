/*
 * 68_thresholds.sql --- the thresholds and windows of the business views
 * (75_business_views.sql), of hub.sync_status and of hub.metrics(), as
 * configuration: hub.thresholds shows each with its default and meaning,
 * hub.set_threshold changes one (audited in hub.operator_audit).
 */

/*
 * The defaults live in the view hub.thresholds; an operator's value is a
 * row of hub.threshold_settings, the only table a dump carries (so a
 * restore into a newer version keeps the operator's values and the new
 * defaults).
 */
CREATE TABLE hub.threshold_settings (
	name		text PRIMARY KEY,
	value		interval NOT NULL CHECK (value > interval '0' AND value <= interval '366 days'),
	set_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	set_by		text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE hub.threshold_settings IS
'Operator values of the thresholds of the business views and of hub.metrics() (hub.thresholds shows them with their defaults); written by hub.set_threshold only, each change audited in hub.operator_audit.';
SELECT pg_catalog.pg_extension_config_dump('hub.threshold_settings', '');

CREATE VIEW hub.thresholds AS
SELECT d.name, coalesce(s.value, d.default_value) AS value, d.default_value, d.description,
	   s.set_at, s.set_by
FROM (VALUES
	('order_release', interval '4 hours',
	 'An order created (or draft) and not released to a warehouse for longer is listed by hub.orders_awaiting_release.'),
	('carrier_scan', interval '24 hours',
	 'A shipment with a label and no carrier scan for longer is listed by hub.missing_tracking.'),
	('erp_posting', interval '1 hour',
	 'An inventory adjustment or shipment confirmation not delivered to an ERP endpoint for longer is overdue in hub.erp_postings_pending.'),
	('return_reconciliation', interval '72 hours',
	 'A return received or inspected and not resolved by the ERP for longer is overdue in hub.returns_awaiting_reconciliation.'),
	('portal_freshness', interval '15 minutes',
	 'A portal showing another state than the canonical one for longer is overdue in hub.portal_freshness.'),
	('cycle_time_window', interval '1 day',
	 'The window of hub.cycle_times (orders shipped, confirmations delivered within it).'),
	('sync_status_lookback', interval '1 day',
	 'How far back hub.sync_status looks for the last success of a subscription (older: NULL).'),
	('metrics_window', interval '5 minutes',
	 'The window of hub.metrics()''s recent attempts, poll requests and delivery latency histogram.')
) d (name, default_value, description)
LEFT JOIN hub.threshold_settings s ON s.name = d.name;
COMMENT ON VIEW hub.thresholds IS
'Thresholds and windows of the business views and of hub.metrics(): their value (the operator''s, else the default), default and meaning. Change one with hub.set_threshold(name, value, reason).';

CREATE FUNCTION hub.set_threshold(name text, value interval, reason text DEFAULT NULL)
RETURNS interval
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_old interval;
BEGIN
	IF NOT EXISTS (SELECT FROM hub.thresholds t WHERE t.name = set_threshold.name) THEN
		RAISE EXCEPTION 'unknown threshold: "%"', set_threshold.name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'SELECT name FROM hub.thresholds lists them.';
	END IF;
	IF value IS NOT NULL THEN
		PERFORM hub._check_setting(set_threshold.name, value > interval '0' AND value <= interval '366 days',
								   value::text, 'above 0 and at most 366 days');
	END IF;
	SELECT t.value INTO v_old FROM hub.thresholds t WHERE t.name = set_threshold.name;
	IF value IS NULL THEN
		DELETE FROM hub.threshold_settings s WHERE s.name = set_threshold.name;
	ELSE
		INSERT INTO hub.threshold_settings AS s (name, value) VALUES (set_threshold.name, set_threshold.value)
		ON CONFLICT ON CONSTRAINT threshold_settings_pkey
		DO UPDATE SET value = excluded.value, set_at = pg_catalog.now(), set_by = session_user;
	END IF;
	PERFORM hub._audit('set_threshold', set_threshold.name, reason,
					   pg_catalog.jsonb_build_object('old', v_old, 'new', set_threshold.value));
	RETURN (SELECT t.value FROM hub.thresholds t WHERE t.name = set_threshold.name);
END
$$;
COMMENT ON FUNCTION hub.set_threshold(text, interval, text) IS
'Set a threshold of hub.thresholds (above 0, at most 366 days; NULL: back to its default), audited in hub.operator_audit with the old and new value; returns the value now in force. 22023 for an unknown name or a value out of range.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION hub.set_threshold(text, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.set_threshold(text, interval, text) TO hub_admin;
GRANT SELECT ON hub.thresholds, hub.threshold_settings TO hub_reader;
