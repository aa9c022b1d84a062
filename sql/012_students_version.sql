-- Issue 11 "Speed on a database that has lived": a version of each district's students.
--
-- An upload reads the district's students twice: before the district's lock (to hash the
-- new passwords ahead, phase 1) and under it (the plan). Reading 1M students takes ~1 s.
-- `districts.students_version` changes in the same transaction as any write to the
-- district's students, so an upload that finds, under the lock, the version its phase 1
-- read (in one REPEATABLE READ snapshot with the students) knows nothing has changed and
-- plans on what it already holds. Any other value: it reads them again.
--
-- Kept by statement-level triggers (one UPDATE per statement, not per row), whoever
-- writes: an upload, a revert, `eams setup load`, an operator's SQL.

ALTER TABLE districts ADD COLUMN students_version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION students_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE districts SET students_version = students_version + 1
        WHERE district_id IN (SELECT DISTINCT district_id FROM old_rows);
    ELSIF TG_OP = 'TRUNCATE' THEN
        UPDATE districts SET students_version = students_version + 1;
    ELSE
        UPDATE districts SET students_version = students_version + 1
        WHERE district_id IN (SELECT DISTINCT district_id FROM new_rows);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER students_version_insert AFTER INSERT ON students
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION students_bump_version();
CREATE TRIGGER students_version_update AFTER UPDATE ON students
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION students_bump_version();
CREATE TRIGGER students_version_delete AFTER DELETE ON students
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION students_bump_version();
CREATE TRIGGER students_version_truncate AFTER TRUNCATE ON students
    FOR EACH STATEMENT EXECUTE FUNCTION students_bump_version();
