-- students_order_active_idx (order_id WHERE status = 'active') is dead weight: no query
-- uses it, and every write of a student pays for it.
-- * Its only readers would be the license recounts (db/setup.py recount_licenses, the
--   tests' and the benchmark's invariant checks): each counts the active students of
--   every order of a district or of the whole database, and PostgreSQL plans them as a
--   sequential scan of students with or without the index (EXPLAIN ANALYZE on the
--   nightly-1m benchmark database: 355 ms with it, 365 ms without). The recount runs only
--   when `eams setup load` inserts students, never in an upload. The upload counts
--   licenses from the orders' `used` counters, which the orders_used_within_size CHECK
--   keeps between 0 and size.
-- * Its cost: one more index entry for every active student inserted, and every UPDATE
--   that changes status or order_id cannot be HOT, because status (the predicate) and
--   order_id are indexed columns. Measured on the nightly-1m benchmark (A/B, same code,
--   fresh database copies, median of 3): UPDATE of 105k students 2.45 s -> 2.25 s, apply
--   8.36 s -> 8.06 s.
-- No constraint depends on it.

DROP INDEX students_order_active_idx;
