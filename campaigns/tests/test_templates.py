import pytest

from campaigns.models import Template
from campaigns.services import template_create, template_update
from delivery.exceptions import TemplateSyntaxInvalid

pytestmark = pytest.mark.django_db


def test_a_broken_template_is_refused_at_save_naming_the_line_and_nothing_is_stored():
    with pytest.raises(TemplateSyntaxInvalid) as exc:
        template_create(name="Broken", subject="Hi", html="<p>ok</p>\n<p>fine</p>\n<p>{{ name | }}</p>")

    assert "html, line 3" in exc.value.message
    assert not Template.objects.exists()


def test_an_update_that_breaks_a_template_leaves_the_stored_one_intact():
    template = template_create(name="Good", subject="Hi {{ name }}", text="Hello")

    with pytest.raises(TemplateSyntaxInvalid):
        template_update(template=template, text="{{ ''.__class__.__mro__ }}")

    template.refresh_from_db()
    assert template.text == "Hello"


def test_a_template_needs_a_body():
    with pytest.raises(TemplateSyntaxInvalid) as exc:
        template_create(name="Empty", subject="Hi")

    assert "needs an HTML or a text body" in exc.value.message


def test_admin_refuses_a_broken_template_with_the_line(admin_client):
    response = admin_client.post(
        "/admin/campaigns/template/add/",
        {"name": "T", "subject": "Hi {{ name", "html": "<p>x</p>", "text": ""},
    )

    assert response.status_code == 200
    assert "Template subject, line 1" in response.content.decode()
    assert not Template.objects.exists()
