-- Issue 11: the students key checks of 010 probe schools and orders once per distinct
-- key instead of once per written row.
--
-- As written in 010, the planner runs each check as a nested-loop anti join with one index
-- probe of schools per row of the transition table (LIMIT 1 makes it expect an early
-- match): EXPLAIN ANALYZE on the nightly-1m-aged benchmark, 97k students inserted and
-- 98k updated, 130 ms and 138 ms per statement. A district names a few hundred schools and
-- a few orders: the distinct keys of the transition table (one hash aggregate) are what
-- need checking. Same guarantee, same error (SQLSTATE 23503, same message).

CREATE OR REPLACE FUNCTION students_check_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.district_id, n.school_id INTO bad
    FROM (SELECT DISTINCT district_id, school_id FROM new_rows) n
    WHERE NOT EXISTS (SELECT 1 FROM schools s
                      WHERE s.district_id = n.district_id AND s.school_id = n.school_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'students: (district_id, school_id)=(%, %) is not a school of the district',
            bad.district_id, bad.school_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.district_id, n.order_id INTO bad
    FROM (SELECT DISTINCT district_id, order_id FROM new_rows) n
    WHERE NOT EXISTS (SELECT 1 FROM orders o
                      WHERE o.district_id = n.district_id AND o.order_id = n.order_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'students: (district_id, order_id)=(%, %) is not an order of the district',
            bad.district_id, bad.order_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
