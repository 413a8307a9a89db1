"""Escalation settings and the pieces of its payload that need no database."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr_common.settings import SchedulerSettings
from cxr_db.escalations.store import webhook_label
from cxr_scheduler.escalation import study_url


def test_webhooks_are_a_comma_separated_list_of_http_urls() -> None:
    settings = SchedulerSettings(
        escalation_webhooks=" https://a.example/h , ,http://b.example:8080/x?t=1 "
    )
    assert settings.escalation_webhook_urls == [
        "https://a.example/h",
        "http://b.example:8080/x?t=1",
    ]
    assert SchedulerSettings().escalation_webhook_urls == []
    assert (SchedulerSettings().escalate_after_s, SchedulerSettings().escalate_repeat_s) == (
        900.0,
        900.0,
    )


@pytest.mark.parametrize("bad", ["ftp://a.example/x", "file:///etc/passwd", "a.example/hook"])
def test_a_webhook_that_is_not_http_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValidationError):
        SchedulerSettings(escalation_webhooks=f"https://ok.example,{bad}")


def test_a_webhook_is_shown_without_its_path_or_query() -> None:
    assert webhook_label("https://hooks.example/services/T0/B1/secret?x=1") == (
        "https://hooks.example"
    )
    assert webhook_label("http://10.0.0.5:8080/alert") == "http://10.0.0.5:8080"


def test_the_study_link_quotes_the_uid_under_the_base_url() -> None:
    assert study_url("https://cxr.example/", "1.2.3") == "https://cxr.example/studies/1.2.3"
    assert study_url("", "1.2.3") == "/studies/1.2.3"
