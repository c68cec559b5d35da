"""Bench-only settings for bench/faults.py's processes: the project's settings with DEBUG off and bench secrets,
and anymail's HTTP timeout from FAULTS_ESP_TIMEOUT (seconds, connect and read), so that the flaky run's
injected stalls trip the client within a second rather than the production 30 s.
"""

import os

os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECRET_KEY", "bench-faults-secret-key")
os.environ.setdefault("WEBHOOK_SECRET", "mailer:bench-faults-secret")

from mailer_project.settings import *  # noqa: E402, F403
from mailer_project.settings import ANYMAIL  # noqa: E402

if os.environ.get("FAULTS_ESP_TIMEOUT"):
    _timeout = float(os.environ["FAULTS_ESP_TIMEOUT"])
    ANYMAIL = {**ANYMAIL, "REQUESTS_TIMEOUT": (_timeout, _timeout)}
