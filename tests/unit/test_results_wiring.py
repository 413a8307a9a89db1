"""Results back to PACS, the pieces without services: settings, the send-results command's
refusal of a malformed destination, the retry backoff, the study page's block."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cxr_common.errors import ConfigurationError
from cxr_common.settings import ResultSettings, SchedulerSettings, SupervisorSettings
from cxr_db.results.states import ResultState, SendStatus
from cxr_db.results.store import DestinationOutcome, StudyResults
from cxr_sender.results import retry_policy
from cxr_triage.cli import main
from worklist.pages import results_block
from worklist.present import results_json


def test_result_settings_defaults_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_RESULT_DESTINATIONS", raising=False)
    settings = ResultSettings()
    assert settings.result_destinations == ""
    assert settings.result_calling_ae_title == "CXR_TRIAGE"
    assert settings.results_queue_name == "cxr-results"
    assert settings.uid_root is None
    assert settings.uid_root_file == settings.data_dir / "uid-root"
    assert SchedulerSettings().study_quiet_s == 30
    assert "result_destinations" in SupervisorSettings.model_fields  # `up` checks them too
    with pytest.raises(ConfigurationError, match="CXR_RESULT_CALLING_AE_TITLE"):
        settings.with_overrides(result_calling_ae_title="A\\B")
    with pytest.raises(ConfigurationError, match="CXR_RESULT_CALLING_AE_TITLE"):
        settings.with_overrides(result_calling_ae_title="X" * 17)
    with pytest.raises(ConfigurationError, match="CXR_STUDY_QUIET_S"):
        SchedulerSettings().with_overrides(study_quiet_s=-1)


def test_send_results_refuses_a_malformed_destination_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CXR_RESULT_DESTINATIONS", "PACS@pacs.example.org:104,PACS@host")
    assert main(["send-results"]) == 2
    err = capsys.readouterr().err
    assert "'PACS@host'" in err
    assert "AE_TITLE@host:port" in err


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [retry_policy(12, 10).backoff_s(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert retry_policy(12, 300).backoff_s(10_000) == 300
    assert retry_policy(12, 300).exhausted(12)
    assert not retry_policy(12, 300).exhausted(11)


def _results() -> StudyResults:
    at = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    return StudyResults(
        ResultState.RESULTS_FAILED,
        2,
        (
            DestinationOutcome(
                "ARCHIVE@10.0.0.7:104",
                2,
                12,
                SendStatus.FAILED,
                at,
                "<no answer>",
                None,
                "2.25.9",
                None,
                None,
            ),
            DestinationOutcome(
                "PACS@pacs:104",
                2,
                1,
                SendStatus.SENT,
                at,
                None,
                "2.25.8",
                "2.25.9",
                0,
                0xB000,
            ),
        ),
    )


def test_study_page_block_and_json_show_state_version_and_each_destination() -> None:
    html = results_block(_results())
    assert 'data-result-state="results_failed"' in html
    assert "could NOT be sent" in html
    assert "ARCHIVE@10.0.0.7:104" in html
    assert "&lt;no answer&gt;" in html  # escaped
    assert "SC 0x0000 · SR 0xB000" in html
    assert results_block(None) == ""
    data = results_json(_results())
    assert data is not None
    assert data["state"] == "results_failed"
    assert data["result_version"] == 2
    failed, sent = data["destinations"]  # type: ignore[misc]
    assert (failed["status"], failed["attempt"], failed["sc_status"]) == ("failed", 12, None)
    assert (sent["sc_status"], sent["sr_status"]) == ("0x0000", "0xB000")
