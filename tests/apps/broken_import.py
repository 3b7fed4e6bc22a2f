"""An application module that fails to import: it reads a setting that is
not there (as ``os.environ["DATABASE_URL"]`` does on a machine without it)."""
from __future__ import annotations

import os

import miyaq

app = miyaq.App()
DATABASE_URL = os.environ["MIYAQ_TEST_A_SETTING_NOBODY_SETS"]
