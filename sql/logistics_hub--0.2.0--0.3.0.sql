-- sql/logistics_hub--0.2.0--0.3.0.sql: the step from 0.2.0 to 0.3.0.
-- Written by hand beside the changes of sql/src/ it brings; frozen once
-- 0.3.0 is released (a later change is a step of its own).
-- test/sql/zz_upgrade.sql checks that 0.1.0 updated along the steps has
-- exactly the catalogue of a fresh install.

\echo Use "ALTER EXTENSION logistics_hub UPDATE TO '0.3.0'" to load this file. \quit

-- ================================================================ engine
-- (endpoint throttling shared by push and poll: issue 18)



-- ================================================================ pollers
-- (issue 18)



-- ================================================================ flow
-- (inbox -> canonical state -> canonical events: issue 19)



-- ================================================================ inbox worker
-- (issue 19)



-- ================================================================ end
