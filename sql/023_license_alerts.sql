-- Licenses in every email, and an alert before they run out.
--
-- districts.low_licenses: the district is alerted when its Enterprise order has fewer
-- available licenses than this (NULL: the default, 5% of the order's size rounded up, at
-- least 1; 0: no alert by count). districts.account_managers: in copy of that alert (none:
-- the operators, EAMS_OPERATOR_EMAILS).
--
-- district_alerts: two more kinds. `licenses_low`, the one low-licenses alert a day
-- (subject: the district's local date); `no_license_available`, the alert for an upload
-- with rows refused NO_LICENSE_AVAILABLE, sent even after the day's (subject: the upload
-- key).

ALTER TABLE districts
    ADD COLUMN low_licenses integer CHECK (low_licenses >= 0),
    ADD COLUMN account_managers text[] NOT NULL DEFAULT '{}';

ALTER TABLE district_alerts DROP CONSTRAINT district_alerts_kind_check;
ALTER TABLE district_alerts ADD CONSTRAINT district_alerts_kind_check CHECK (kind IN (
    'missing_upload', 'misnamed_file', 'misnamed_digest', 'raw_file_kept',
    'licenses_low', 'no_license_available'));
