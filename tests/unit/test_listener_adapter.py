"""The C-STORE handler is an adapter: every ingest outcome has one DICOM answer."""

from __future__ import annotations

from cxr_ingest import Disposition, Outcome, RefusalCode
from cxr_ingest.outcome import refused
from cxr_results.send import is_stored
from dicom_listener.handlers import STATUS_FOR_REFUSAL, status_dataset, store_status
from dicom_listener.statuses import StoreStatus


def test_every_refusal_code_has_a_failure_status() -> None:
    assert set(STATUS_FOR_REFUSAL) == set(RefusalCode)
    for code, status in STATUS_FOR_REFUSAL.items():
        assert not is_stored(status), code


def test_the_statuses_are_the_ones_the_listener_always_answered() -> None:
    assert STATUS_FOR_REFUSAL[RefusalCode.CONTENT_CONFLICT] is StoreStatus.DUPLICATE_SOP_INSTANCE
    assert STATUS_FOR_REFUSAL[RefusalCode.UNDECODABLE] is StoreStatus.UNDECODABLE_DATASET
    assert STATUS_FOR_REFUSAL[RefusalCode.DECLARED_SIZE] is StoreStatus.DECLARED_SIZE
    assert STATUS_FOR_REFUSAL[RefusalCode.STORAGE_UNAVAILABLE] is (
        StoreStatus.OUT_OF_RESOURCES_STORAGE
    )
    assert STATUS_FOR_REFUSAL[RefusalCode.DATABASE_UNAVAILABLE] is (
        StoreStatus.OUT_OF_RESOURCES_DATABASE
    )
    assert STATUS_FOR_REFUSAL[RefusalCode.SOP_CLASS_NOT_STORED] is (
        StoreStatus.SOP_CLASS_NOT_SUPPORTED
    )
    assert STATUS_FOR_REFUSAL[RefusalCode.INTERNAL_ERROR] is StoreStatus.PROCESSING_FAILURE


def test_stored_duplicate_and_our_own_objects_answer_success() -> None:
    for disposition in (Disposition.STORED, Disposition.DUPLICATE, Disposition.OWN_OBJECT):
        outcome = Outcome(disposition)
        assert outcome.success
        assert store_status(outcome) is StoreStatus.SUCCESS


def test_a_refusal_answers_its_status_with_the_outcome_comment() -> None:
    outcome = refused(RefusalCode.DATABASE_UNAVAILABLE, "long reason", "database unavailable")
    assert not outcome.success
    answer = status_dataset(store_status(outcome), outcome.comment)
    assert answer.Status == 0xA702
    assert answer.ErrorComment == "database unavailable"
