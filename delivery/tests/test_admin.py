"""Delivery admin: a suppression typed in goes through suppression_add."""

import pytest

from delivery.models import Message, Suppression
from tests.factories import MessageFactory

pytestmark = pytest.mark.django_db


def test_suppressing_an_address_from_the_admin_stops_its_queued_messages(admin_client):
    queued = MessageFactory(to_email="ann@example.org")

    response = admin_client.post(
        "/admin/delivery/suppression/add/",
        {"email": " Ann@Example.org ", "reason": "manual", "detail": "asked by phone"},
    )

    assert response.status_code == 302
    suppression = Suppression.objects.get()
    assert (suppression.email, suppression.reason, suppression.detail) == (
        "ann@example.org",
        "manual",
        "asked by phone",
    )
    assert suppression.source == "admin:admin"
    assert len(suppression.email_hash) == 64
    queued.refresh_from_db()
    assert queued.status == Message.Status.SUPPRESSED


def test_an_invalid_address_is_a_form_error_and_nothing_is_stored(admin_client):
    response = admin_client.post("/admin/delivery/suppression/add/", {"email": "nobody", "reason": "manual"})

    assert response.status_code == 200
    assert "is not a valid email address" in response.content.decode()
    assert not Suppression.objects.exists()


def test_an_erased_address_shows_without_its_address(admin_client):
    Suppression.objects.create(email=None, email_hash="ab" * 32, reason=Suppression.Reason.ERASED)

    page = admin_client.get("/admin/delivery/suppression/").content.decode()

    assert "erased abababababab (erased)" in page


def test_a_provider_rate_of_zero_is_refused_on_the_form_and_nothing_changes(admin_client):
    from delivery.models import Provider

    provider = Provider.objects.create(name="pm", kind=Provider.Kind.POSTMARK, max_rate=10)

    response = admin_client.post(
        f"/admin/delivery/provider/{provider.pk}/change/",
        {"name": "pm", "kind": "postmark", "is_enabled": "on", "priority": 1, "weight": 1, "max_rate": 0,
         "routing_domains": "[]", "warming_day": 0},
    )  # fmt: skip

    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 0.01." in response.content.decode()
    provider.refresh_from_db()
    assert provider.max_rate == 10
