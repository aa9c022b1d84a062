"""The PostgreSQL server the tests create their databases on (EAMS_TEST_ADMIN_URL, default
the local one at 127.0.0.1:5432, user postgres, trust)."""

import os

ADMIN_URL = os.environ.get("EAMS_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
