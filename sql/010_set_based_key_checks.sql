-- Issue 11 "Speed on a database that has lived": the remaining foreign keys on the bulk
-- path become set-based checks.
--
-- A foreign key is checked by one row-level trigger per inserted or updated row (an SPI
-- query that also locks the referenced row FOR KEY SHARE). Measured on the benchmark
-- (bench/RESULTS.md, EXPLAIN ANALYZE): onboarding 99k students spent 1.6 s of a 6.0 s
-- INSERT in the two students keys and 2.4 s of a 3.6 s history INSERT in the two history
-- keys; a 1M-row onboarding ten times that.
--
-- The same guarantees, checked once per statement over its transition table (one anti
-- join against a small table, or an index probe per distinct key):
-- * students (district_id, school_id) -> schools and (district_id, order_id) -> orders,
--   after every INSERT and UPDATE of students; deleting or re-keying a school or order
--   that a student still names fails, as NO ACTION did;
-- * student_history.upload_id -> uploads and student_pk -> students after every INSERT;
--   ON DELETE CASCADE from uploads and from students is kept by statement triggers that
--   delete the history rows of the deleted uploads or students.
-- What is not kept: the FOR KEY SHARE lock on the referenced rows while the transaction
-- runs. Students, schools and orders are never deleted by the product (a school is closed
-- with active = false; students are deactivated), and an upload's rows are written under
-- its district's advisory lock.
-- Violations raise SQLSTATE 23503 (foreign_key_violation), as the keys did.

ALTER TABLE students
    DROP CONSTRAINT students_district_id_school_id_fkey,
    DROP CONSTRAINT students_district_id_order_id_fkey;

ALTER TABLE student_history
    DROP CONSTRAINT student_history_student_pk_fkey,
    DROP CONSTRAINT student_history_upload_id_fkey;

-- students -> schools, orders -----------------------------------------------------------

CREATE FUNCTION students_check_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.district_id, n.school_id INTO bad
    FROM new_rows n LEFT JOIN schools s
        ON s.district_id = n.district_id AND s.school_id = n.school_id
    WHERE s.school_id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'students: (district_id, school_id)=(%, %) is not a school of the district',
            bad.district_id, bad.school_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.district_id, n.order_id INTO bad
    FROM new_rows n LEFT JOIN orders o
        ON o.district_id = n.district_id AND o.order_id = n.order_id
    WHERE o.order_id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'students: (district_id, order_id)=(%, %) is not an order of the district',
            bad.district_id, bad.order_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER students_keys_insert AFTER INSERT ON students
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION students_check_keys();
CREATE TRIGGER students_keys_update AFTER UPDATE ON students
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION students_check_keys();

-- a school or order that disappears (deleted, or its key changed) must not be named by a
-- student: one probe per removed key (rare: master data is never deleted)
CREATE FUNCTION schools_still_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone record;
BEGIN
    FOR gone IN
        SELECT o.district_id, o.school_id FROM old_rows o
        WHERE NOT EXISTS (SELECT 1 FROM schools s
                          WHERE s.district_id = o.district_id AND s.school_id = o.school_id)
    LOOP
        IF EXISTS (SELECT 1 FROM students st
                   WHERE st.district_id = gone.district_id AND st.school_id = gone.school_id) THEN
            RAISE EXCEPTION 'schools: (district_id, school_id)=(%, %) is still named by students',
                gone.district_id, gone.school_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER schools_referenced_delete AFTER DELETE ON schools
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION schools_still_referenced();
CREATE TRIGGER schools_referenced_update AFTER UPDATE ON schools
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION schools_still_referenced();

CREATE FUNCTION orders_still_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone record;
BEGIN
    FOR gone IN
        SELECT o.district_id, o.order_id FROM old_rows o
        WHERE NOT EXISTS (SELECT 1 FROM orders x
                          WHERE x.district_id = o.district_id AND x.order_id = o.order_id)
    LOOP
        IF EXISTS (SELECT 1 FROM students st
                   WHERE st.district_id = gone.district_id AND st.order_id = gone.order_id) THEN
            RAISE EXCEPTION 'orders: (district_id, order_id)=(%, %) is still named by students',
                gone.district_id, gone.order_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER orders_referenced_delete AFTER DELETE ON orders
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION orders_still_referenced();
CREATE TRIGGER orders_referenced_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION orders_still_referenced();

-- student_history -> uploads, students ------------------------------------------------

CREATE FUNCTION student_history_check_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
BEGIN
    SELECT n.upload_id INTO bad
    FROM (SELECT DISTINCT upload_id FROM new_rows) n
    WHERE NOT EXISTS (SELECT 1 FROM uploads u WHERE u.upload_id = n.upload_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'student_history: upload_id=% is not an upload', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.student_pk INTO bad
    FROM new_rows n
    WHERE NOT EXISTS (SELECT 1 FROM students s WHERE s.student_pk = n.student_pk)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'student_history: student_pk=% is not a student', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER student_history_keys_insert AFTER INSERT ON student_history
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION student_history_check_keys();
CREATE TRIGGER student_history_keys_update AFTER UPDATE ON student_history
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION student_history_check_keys();

-- ON DELETE CASCADE, kept
CREATE FUNCTION uploads_delete_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM student_history h USING old_rows o WHERE h.upload_id = o.upload_id;
    RETURN NULL;
END $$;

CREATE TRIGGER uploads_cascade_history AFTER DELETE ON uploads
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION uploads_delete_history();

CREATE FUNCTION students_delete_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM student_history h USING old_rows o WHERE h.student_pk = o.student_pk;
    RETURN NULL;
END $$;

CREATE TRIGGER students_cascade_history AFTER DELETE ON students
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION students_delete_history();
