-- Issue 11: the history's student key check (sql/010) reads the students in one ordered
-- pass when the history rows name most keys of a range (an onboarding's), instead of one
-- index probe per row.
--
-- Same guarantee, same errors: every student_pk written to student_history is a student
-- visible to the statement (SQLSTATE 23503, the same message and the same first upload_id
-- check as before). Only how the students are read changes:
-- * dense (the written keys fill at least half of [min, max]: the history of new students,
--   whose keys come from the sequence in one block): a merge anti join of the written keys
--   (sorted) with the primary key index read over [min, max] once, in order;
-- * otherwise (a night's updates, keys spread over the district; a handful of rows): the
--   nested loop of index probes, as before.
-- Measured on onboarding-1m (990,627 history rows of new students, inside the apply's
-- transaction, the students just written): the probes 1.23-1.42 s, the ordered pass 0.55 s
-- (sort of the keys included). The probe costs ~1.3 us per written row, the pass ~0.55 us
-- per key of the range: below half the range the probes win, hence the threshold.
-- The planner is not asked to choose: right after a bulk load its statistics are stale
-- (a students table of 2,000 rows that now has 1M), so the dense query runs with merge
-- joins on and nested loops and hash joins off (set for that statement and put back, as
-- db/apply.py does for its UPDATE, whose own settings are in force when its history's
-- check runs).
--
-- Lock: CREATE OR REPLACE FUNCTION takes no lock on any table; the triggers keep calling
-- the function by name. Instant on a live database.

CREATE OR REPLACE FUNCTION student_history_check_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
    lo bigint;
    hi bigint;
    n bigint;
    nestloop text;
    hashjoin text;
    mergejoin text;
BEGIN
    SELECT n.upload_id INTO bad
    FROM (SELECT DISTINCT upload_id FROM new_rows) n
    WHERE NOT EXISTS (SELECT 1 FROM uploads u WHERE u.upload_id = n.upload_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'student_history: upload_id=% is not an upload', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT min(student_pk), max(student_pk), count(*) INTO lo, hi, n FROM new_rows;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF n >= (hi - lo + 1) / 2 THEN
        nestloop := current_setting('enable_nestloop');
        hashjoin := current_setting('enable_hashjoin');
        mergejoin := current_setting('enable_mergejoin');
        PERFORM set_config('enable_nestloop', 'off', true);
        PERFORM set_config('enable_hashjoin', 'off', true);
        PERFORM set_config('enable_mergejoin', 'on', true);
        SELECT w.student_pk INTO bad
        FROM new_rows w
        WHERE NOT EXISTS (SELECT 1 FROM students s
                          WHERE s.student_pk = w.student_pk AND s.student_pk BETWEEN lo AND hi)
        LIMIT 1;
        PERFORM set_config('enable_nestloop', nestloop, true);
        PERFORM set_config('enable_hashjoin', hashjoin, true);
        PERFORM set_config('enable_mergejoin', mergejoin, true);
    ELSE
        SELECT w.student_pk INTO bad
        FROM new_rows w
        WHERE NOT EXISTS (SELECT 1 FROM students s WHERE s.student_pk = w.student_pk)
        LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN  -- not FOUND: PERFORM set_config sets FOUND (student_pk is NOT NULL)
        RAISE EXCEPTION 'student_history: student_pk=% is not a student', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
