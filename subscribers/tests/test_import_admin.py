"""The admin upload: stored, queued for a worker, run, and its progress and result shown on its page."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from subscribers.models import Subscriber, SubscriberImport
from subscribers.services.import_jobs import subscriber_import_run
from tests.factories import MailingListFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def upload(admin_client, content: bytes, **options):
    news = MailingListFactory(slug="news")
    data = {"mailing_list": news.pk, "file": SimpleUploadedFile("people.csv", content, "text/csv"),
            "encoding": "utf-8", "column_map": "", **options}  # fmt: skip
    return admin_client.post("/admin/subscribers/subscriberimport/add/", data, follow=True)


def test_an_upload_is_queued_then_run_and_its_page_shows_the_result(admin_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(admin_client, b"email,name\nann@example.org,Ann\nnope,Bad\n")

    assert response.status_code == 200
    job = SubscriberImport.objects.get()
    assert job.status == SubscriberImport.Status.QUEUED
    assert len(callbacks) == 1  # the worker is asked once the upload is committed

    subscriber_import_run(import_id=job.pk)
    assert subscriber_import_run(import_id=job.pk).status == SubscriberImport.Status.DONE  # a second run is a no-op

    job.refresh_from_db()
    assert (job.summary["created"], job.summary["invalid"], job.bytes_done) == (1, 1, job.bytes_total)
    assert Subscriber.objects.filter(email="ann@example.org", lists__slug="news").exists()
    page = admin_client.get(f"/admin/subscribers/subscriberimport/{job.pk}/change/").content.decode()
    assert "2 rows: 1 created" in page
    assert 'http-equiv="refresh"' not in page
    rejected = admin_client.get(f"/admin/subscribers/subscriberimport/{job.pk}/errors.csv")
    assert b"".join(rejected.streaming_content).decode().splitlines()[1].startswith("3,nope,invalid email")


def test_an_unreadable_file_fails_with_its_reason_on_the_page(admin_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        upload(admin_client, b"name,city\nAnn,Oslo\n")
    job = SubscriberImport.objects.get()
    page = admin_client.get(f"/admin/subscribers/subscriberimport/{job.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' in page  # the page follows a queued import

    job = subscriber_import_run(import_id=job.pk)

    assert job.status == SubscriberImport.Status.FAILED
    assert "no 'email' column" in job.error
    assert not Subscriber.objects.exists()


def test_a_bad_column_mapping_is_refused_by_the_form(admin_client):
    response = upload(admin_client, b"email\na@example.org\n", column_map="no equals sign")

    assert "expected &#x27;file column=email|name|attribute&#x27;" in response.content.decode()
    assert not SubscriberImport.objects.exists()


def test_progress_is_reported_while_the_import_runs(admin_client, django_capture_on_commit_callbacks, monkeypatch):
    """Reported through the cache, outside the import's transaction (on PostgreSQL, in the middle of its COPY)."""
    from django.core.cache import cache

    from subscribers.services import import_copy, import_jobs, importing

    monkeypatch.setattr(import_copy, "CHUNK_BYTES", 64)
    monkeypatch.setattr(importing, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(import_jobs, "PROGRESS_WRITE_SECONDS", 0)
    seen = []
    real_set = cache.set

    def recording_set(key, value, *args, **kwargs):
        if key == import_jobs.import_progress_key(job.pk):
            seen.append(value)
        return real_set(key, value, *args, **kwargs)

    monkeypatch.setattr(import_jobs.cache, "set", recording_set)
    rows = "".join(f"person{i}@example.org,P{i}\n" for i in range(50))
    with django_capture_on_commit_callbacks():
        upload(admin_client, ("email,name\n" + rows).encode())
    job = SubscriberImport.objects.get()

    subscriber_import_run(import_id=job.pk)

    assert len(seen) >= 3
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (job.bytes_total, job.bytes_total)
    assert Subscriber.objects.count() == 50
