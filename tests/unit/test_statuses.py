"""The DICOM statuses the listener answers with: values and families (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, VERIFICATION_SERVICE_CLASS_STATUS

from cxr_results.send import StoreWarning, is_stored
from dicom_listener.statuses import (
    CALLING_AE_REJECTION,
    EchoStatus,
    StoreStatus,
)


def test_store_status_values() -> None:
    assert int(StoreStatus.SUCCESS) == 0x0000
    assert int(StoreStatus.OUT_OF_RESOURCES) == 0xA700
    assert int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS) == 0xA900
    assert int(StoreStatus.CANNOT_UNDERSTAND) == 0xC000
    assert int(StoreStatus.UNDECODABLE_DATASET) == 0xC210
    assert int(StoreStatus.SOP_CLASS_NOT_SUPPORTED) == 0x0122
    assert int(StoreStatus.PROCESSING_FAILURE) == 0x0110


def test_persistence_failures_are_out_of_resources() -> None:
    for status in (
        StoreStatus.OUT_OF_RESOURCES,
        StoreStatus.OUT_OF_RESOURCES_STORAGE,
        StoreStatus.OUT_OF_RESOURCES_DATABASE,
    ):
        assert 0xA700 <= status <= 0xA7FF
        assert STORAGE_SERVICE_CLASS_STATUS[status] == ("Failure", "Refused: Out of Resources")


def test_unreadable_data_sets_are_cannot_understand() -> None:
    for status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.UNDECODABLE_DATASET):
        assert STORAGE_SERVICE_CLASS_STATUS[status] == ("Failure", "Cannot Understand")
    assert STORAGE_SERVICE_CLASS_STATUS[StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS][1] == (
        "Data Set Does Not Match SOP Class"
    )


def test_every_status_is_a_known_dicom_status_of_its_service() -> None:
    for status in StoreStatus:
        category = STORAGE_SERVICE_CLASS_STATUS[status][0]
        assert category == ("Success" if status == StoreStatus.SUCCESS else "Failure")
    for echo in EchoStatus:
        assert echo in VERIFICATION_SERVICE_CLASS_STATUS or echo == 0x0110
    assert len({int(s) for s in StoreStatus}) == len(StoreStatus)  # no aliases


def test_only_success_and_the_standards_warnings_count_as_stored() -> None:
    """The one success rule of the C-STORE client (cxr_results.send), for what our own
    listener answers and for PACS: PS3.4 Table B.2-1's Success and Warnings."""
    assert is_stored(StoreStatus.SUCCESS)
    assert [s for s in (0xB000, 0xB006, 0xB007) if is_stored(s)] == list(StoreWarning)
    for status in StoreWarning:
        assert STORAGE_SERVICE_CLASS_STATUS[status][0] == "Warning"
    assert not any(is_stored(s) for s in StoreStatus if s != StoreStatus.SUCCESS)
    assert not any(is_stored(s) for s in (0xA700, 0xA900, 0xC000, 0x0110, 0xFF00, 0xB001))


def test_calling_ae_rejection_is_permanent_by_the_service_user_for_the_calling_ae() -> None:
    assert tuple(int(v) for v in CALLING_AE_REJECTION) == (0x01, 0x01, 0x03)
