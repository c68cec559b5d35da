"""Settings, assembled from one module per concern; every value comes from the environment."""

from .base import *  # noqa: F403
from .celery import *  # noqa: F403
from .email import *  # noqa: F403
from .logging import *  # noqa: F403
from .sentry import *  # noqa: F403
