-- Bulk uploads write ~200k history rows a night; every foreign key costs one row-by-row
-- trigger per inserted row (PostgreSQL has no set-based check for INSERT). Measured on the
-- 1M-row benchmark (bench/RESULTS.md) the six history keys were most of the apply step.
--
-- Dropped here: the keys that only repeat what is already guaranteed.
-- * student_history.order_after / school_after are the student's order and school as
--   written by the same statement pair, checked by the students table's own keys;
--   order_before / school_before were checked the same way when they were written.
--   Orders and schools are master data that is never deleted (a school is closed with
--   active = false), so these ids cannot dangle.
-- * students.district_id -> districts: implied by (district_id, school_id) -> schools,
--   whose district_id references districts.
-- Kept: student_history.upload_id and student_pk (their ON DELETE CASCADE is behaviour)
-- and every key of the students table that a row could break.

ALTER TABLE student_history
    DROP CONSTRAINT student_history_order_before_fkey,
    DROP CONSTRAINT student_history_order_after_fkey,
    DROP CONSTRAINT student_history_school_before_fkey,
    DROP CONSTRAINT student_history_school_after_fkey;

ALTER TABLE students DROP CONSTRAINT students_district_id_fkey;
