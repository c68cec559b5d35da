"""Imported first by every bench script: puts the project on the path and sets Django up on embedded defaults
(DEBUG, and var/bench.sqlite3 unless DATABASE_URL names a database)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailer_project.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ["DATABASE_URL"] = f"sqlite:///{ROOT / 'var' / 'bench.sqlite3'}"

import django  # noqa: E402

django.setup()
