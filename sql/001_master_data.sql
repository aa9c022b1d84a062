-- Master data entered by Vantage staff (eams setup load): districts, schools, orders.

CREATE TABLE districts (
    district_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                 text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name                 text NOT NULL,
    timezone             text NOT NULL DEFAULT 'UTC',
    contacts             text[] NOT NULL DEFAULT '{}',
    -- NULL: process as soon as the file has settled; else wait for this local time.
    process_at           time,
    sftp_host            text,
    sftp_port            integer NOT NULL DEFAULT 22 CHECK (sftp_port BETWEEN 1 AND 65535),
    sftp_username        text,
    sftp_password_env    text,
    sftp_private_key_file text,
    sftp_host_key        text,
    sftp_root            text NOT NULL DEFAULT '/',
    -- set once the school and the order exist (see the foreign keys below)
    holding_bin_school_id bigint,
    enterprise_order_id   bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schools (
    school_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id  bigint NOT NULL REFERENCES districts,
    code         text NOT NULL CHECK (length(code) BETWEEN 1 AND 64),
    name         text NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    UNIQUE (district_id, code),
    UNIQUE (district_id, school_id)
);

CREATE TABLE orders (
    order_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id  bigint NOT NULL REFERENCES districts,
    number       text NOT NULL UNIQUE,
    kind         text NOT NULL CHECK (kind IN ('enterprise', 'regular')),
    school_id    bigint,
    size         integer NOT NULL CHECK (size >= 0),
    used         integer NOT NULL DEFAULT 0,
    UNIQUE (district_id, order_id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, school_id),
    -- a license count never goes below zero or above the order's size
    CONSTRAINT orders_used_within_size CHECK (used BETWEEN 0 AND size)
) WITH (fillfactor = 90);

ALTER TABLE districts
    ADD FOREIGN KEY (district_id, holding_bin_school_id) REFERENCES schools (district_id, school_id)
        DEFERRABLE INITIALLY DEFERRED,
    ADD FOREIGN KEY (district_id, enterprise_order_id) REFERENCES orders (district_id, order_id)
        DEFERRABLE INITIALLY DEFERRED;
