-- A district's pauses (master data `pauses:`): date ranges in its time zone, both ends
-- included, in which an upload is held with the guard rule `paused` and the missing-upload
-- alert is silent; the first upload after a pause of 21 days or more is held with
-- `first_after_pause` (eams_pipeline.core.pauses). A JSON list of {"from": "YYYY-MM-DD",
-- "to": "YYYY-MM-DD"} in date order, checked by `eams setup load`; empty: no pauses.

ALTER TABLE districts
    ADD COLUMN pauses jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(pauses) = 'array');
