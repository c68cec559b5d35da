# Mailer image: one image for every process of the docker-compose.yml stack (web, worker, beat, migrate,
# sandbox); the default command is the web server.
#
# Works with the classic builder and with BuildKit (no RUN --mount), since docker-compose 1.x often drives
# the classic one.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------------
# builder: wheels for every pinned requirement, installed into a virtualenv that the runtime stage copies.
# Every package in requirements.txt ships a binary (manylinux) or pure-Python wheel for CPython 3.11
# (psycopg[binary], cryptography, cffi included), so no compiler is installed. If a future pin needs one,
# add `apt-get install --no-install-recommends build-essential` here, and only here.
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
COPY requirements.txt .
RUN pip wheel --wheel-dir /wheels -r requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -r requirements.txt

# ---------------------------------------------------------------------------------------------------------
# runtime: the virtualenv, the project, a non-root user. Copying the finished virtualenv (rather than the
# wheels, then installing them here) keeps the wheel files out of the image's layers without needing
# BuildKit's RUN --mount.
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# WEB_CONCURRENCY: gunicorn's worker count (3); override per deployment (e.g. 2 * cores + 1).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=mailer_project.settings \
    WEB_CONCURRENCY=3

RUN groupadd --system --gid 10001 mailer \
 && useradd --system --uid 10001 --gid mailer --home-dir /app --no-create-home --shell /usr/sbin/nologin mailer

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The code stays owned by root (read-only for the app); only var/ (static files, and the SQLite file, cache
# and broker folders of the embedded default, should the image ever run without DATABASE_URL etc.) is
# writable by the app user.
COPY . .
RUN mkdir -p var/media && chown -R mailer:mailer var

USER mailer

# Static files into var/staticfiles (STATIC_ROOT), served by whitenoise. DEBUG=true only for this step, so
# settings import without SECRET_KEY/WEBHOOK_SECRET (no made-up secret lands in the image's environment);
# memory:// keeps the settings from creating the filesystem broker's folders. Nothing touches a database.
RUN DEBUG=true CELERY_BROKER_URL=memory:// python manage.py collectstatic --noinput

EXPOSE 8000

# GET /health/ (answers after a database query). The Host header is the first ALLOWED_HOSTS entry, so the
# check keeps passing when a deployment narrows ALLOWED_HOSTS to its public name. python: slim has no curl.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; h = (os.environ.get('ALLOWED_HOSTS') or 'localhost').split(',')[0].strip().lstrip('.').replace('*', '') or 'localhost'; r.urlopen(r.Request('http://127.0.0.1:8000/health/', headers={'Host': h}), timeout=5)"]

# Workers: WEB_CONCURRENCY (3). --worker-tmp-dir: the heartbeat file on tmpfs, not the overlay filesystem.
CMD ["gunicorn", "mailer_project.wsgi:application", \
     "--bind", "0.0.0.0:8000", \
     "--timeout", "60", \
     "--graceful-timeout", "30", \
     "--worker-tmp-dir", "/dev/shm", \
     "--access-logfile", "-"]
