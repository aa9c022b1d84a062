-- Students: one row per (district, Student ID). Status and order drive license accounting.

CREATE TABLE students (
    student_pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id          bigint NOT NULL REFERENCES districts,
    student_id           text NOT NULL CHECK (student_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    school_id            bigint NOT NULL,
    last_name            text NOT NULL CHECK (length(last_name) BETWEEN 1 AND 60),
    first_name           text NOT NULL CHECK (length(first_name) BETWEEN 1 AND 60),
    middle_name          text CHECK (length(middle_name) BETWEEN 1 AND 60),
    grade                text NOT NULL CHECK (grade IN ('K','1','2','3','4','5','6','7','8','9','10','11','12')),
    username             text NOT NULL CHECK (username ~ '^[A-Za-z0-9._@-]{3,64}$'),
    -- argon2id PHC string; never a clear password
    password_hash        text CHECK (password_hash LIKE '$argon2%'),
    -- keyed 64-bit fingerprint of (Student ID, password): detects an unchanged password
    -- without re-hashing; useless without the server's EAMS_SECRET_KEY
    password_fingerprint bigint,
    email                text CHECK (length(email) <= 254),
    class_name           text CHECK (length(class_name) BETWEEN 1 AND 100),
    status               text NOT NULL CHECK (status IN ('active', 'deactivated')),
    order_id             bigint NOT NULL,
    -- fingerprint of the template columns (but Status and Password) as last applied
    data_hash            bigint NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- the Student ID is the student's identity within a district
    CONSTRAINT students_district_student_id_key UNIQUE (district_id, student_id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, school_id),
    FOREIGN KEY (district_id, order_id) REFERENCES orders (district_id, order_id)
) WITH (fillfactor = 80);

-- a username is unique across all of MY Access, compared case-insensitively
CREATE UNIQUE INDEX students_username_ci_key ON students (lower(username));
CREATE INDEX students_order_active_idx ON students (order_id) WHERE status = 'active';
