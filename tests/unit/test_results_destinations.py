"""CXR_RESULT_DESTINATIONS parsing and the UID rules of cxr_results (no services)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from cxr_common.errors import ConfigurationError
from cxr_results import (
    ALL_OBJECTS,
    Destination,
    DestinationConfigError,
    ResultObject,
    UidRootError,
    derive_uid,
    generate_uid_root,
    is_our_dataset,
    is_our_uid,
    load_or_create_uid_root,
    parse_destination,
    parse_destinations,
    result_uids,
    validate_uid_root,
)

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
ROOT = "1.2.826.0.1.3680043.10.1024.99"


# ----------------------------------------------------------------------------- destinations


def test_empty_setting_means_no_destination() -> None:
    assert parse_destinations(None) == ()
    assert parse_destinations("") == ()
    assert parse_destinations(" , ,") == ()


def test_entries_parse_into_typed_destinations() -> None:
    got = parse_destinations(
        " PACS@pacs.example.org:104, ARCHIVE @10.0.0.7:11112 ,X@[fd00::7]:4242"
    )
    assert got == (
        Destination("PACS", "pacs.example.org", 104),
        Destination("ARCHIVE", "10.0.0.7", 11112),
        Destination("X", "fd00::7", 4242),
    )
    assert str(got[2]) == "X@[fd00::7]:4242"
    assert str(got[0]) == "PACS@pacs.example.org:104"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("pacs.example.org:104", "no '@' found"),
        ("PACS@pacs.example.org", "no ':port' found"),
        ("@pacs:104", "AE title before '@' is empty"),
        ("   @pacs:104", "AE title before '@' is empty"),
        ("SEVENTEEN_CHARS_X@pacs:104", "at most 16"),
        ("BAD\\AE@pacs:104", "no backslash"),
        ("PACS@:104", "host between '@' and ':' is empty"),
        ("PACS@pa cs:104", "not a host name"),
        ("PACS@fd00::7:104", "IPv6 address in brackets"),
        ("PACS@[fd00::zz]:104", "not an IPv6 address"),
        ("PACS@[fd00::7:104", "no ':port' found"),
        ("PACS@pacs:http", "not a number"),
        ("PACS@pacs:0", "outside 1-65535"),
        ("PACS@pacs:65536", "outside 1-65535"),
        ("PACS@pacs:-1", "not a number"),
    ],
)
def test_malformed_entries_are_named_in_a_clear_error(entry: str, message: str) -> None:
    with pytest.raises(DestinationConfigError, match=re.escape(message)) as info:
        parse_destinations(f"GOOD@host:104,{entry}")
    assert repr(entry.strip()) in str(info.value)
    assert isinstance(info.value, ConfigurationError)


def test_a_destination_listed_twice_is_refused() -> None:
    with pytest.raises(DestinationConfigError, match="listed twice"):
        parse_destinations("PACS@host:104,PACS@host:104")


def test_an_ae_title_may_contain_an_at_sign() -> None:
    assert parse_destination("A@B@host:104") == Destination("A@B", "host", 104)


# ----------------------------------------------------------------------------- UIDs


def test_generated_root_is_a_uuid_root_with_room_left() -> None:
    root = generate_uid_root()
    assert root.startswith("2.25.")
    assert validate_uid_root(root) == root
    assert generate_uid_root() != root


@pytest.mark.parametrize("root", ["", "abc", "1.2.03", "1..2", "1.2.3.", "1." + "2" * 44, "1.2 .3"])
def test_invalid_roots_are_refused(root: str) -> None:
    if root == "1.2.3.":  # a trailing dot is forgiven
        assert validate_uid_root(root) == "1.2.3"
        return
    with pytest.raises(UidRootError):
        validate_uid_root(root)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    root=st.one_of(
        st.builds(lambda n: f"2.25.{n}", st.integers(0, 2**128 - 1)),
        st.just(ROOT),
        st.just("1"),
    ),
    study=st.text(alphabet="0123456789.", min_size=1, max_size=64),
    version=st.integers(1, 10_000),
)
def test_derived_uids_are_valid_stable_and_at_most_64_characters(
    root: str, study: str, version: int
) -> None:
    uids = result_uids(root, study, version)
    values = [
        uids.sc_series_instance_uid,
        uids.sc_sop_instance_uid,
        uids.sr_series_instance_uid,
        uids.sr_sop_instance_uid,
        uids.device_uid,
    ]
    for uid in values:
        assert len(uid) <= 64
        assert UID_RE.match(uid), uid
        assert is_our_uid(uid, root)
    assert len(set(values)) == len(values)
    assert result_uids(root, study, version) == uids


def test_superseding_keeps_the_series_and_changes_the_instances() -> None:
    v1 = result_uids(ROOT, "1.2.3.4", 1)
    v2 = result_uids(ROOT, "1.2.3.4", 2)
    assert v2.sc_series_instance_uid == v1.sc_series_instance_uid
    assert v2.sr_series_instance_uid == v1.sr_series_instance_uid
    assert v2.sc_sop_instance_uid != v1.sc_sop_instance_uid
    assert v2.sr_sop_instance_uid != v1.sr_sop_instance_uid
    # the heatmap Segmentation follows the same rule, in its own series
    assert v2.seg_series_instance_uid == v1.seg_series_instance_uid
    assert v2.seg_sop_instance_uid != v1.seg_sop_instance_uid
    assert v1.seg_sop_instance_uid == result_uids(ROOT, "1.2.3.4", 1).seg_sop_instance_uid
    assert (
        len({v1.sc_series_instance_uid, v1.sr_series_instance_uid, v1.seg_series_instance_uid}) == 3
    )
    assert v1.seg_sop_instance_uid not in (v1.sc_sop_instance_uid, v1.sr_sop_instance_uid)
    assert is_our_uid(v1.seg_sop_instance_uid, ROOT)
    assert len(v1.seg_sop_instance_uid) <= 64
    assert (v1.instance_number, v2.instance_number) == (1, 2)
    other_study = result_uids(ROOT, "1.2.3.5", 1)
    assert other_study.sc_series_instance_uid != v1.sc_series_instance_uid
    other_root = result_uids(ROOT + ".1", "1.2.3.4", 1)
    assert other_root.sc_sop_instance_uid != v1.sc_sop_instance_uid
    with pytest.raises(ValueError, match="1 or more"):
        result_uids(ROOT, "1.2.3.4", 0)


def test_is_our_uid_does_not_match_a_sibling_root() -> None:
    assert is_our_uid(ROOT, ROOT)
    assert is_our_uid(derive_uid(ROOT, "x"), ROOT)
    assert not is_our_uid(ROOT + "0.1", ROOT)  # ...990.1 is not under ...99
    assert not is_our_uid("1.2.826.0.1.3680043.10.1024.9", ROOT)
    assert not is_our_uid(None, ROOT)


def test_is_our_dataset_by_uid_root_and_our_sop_classes_only() -> None:
    from pydicom.uid import (
        ComprehensiveSRStorage,
        ComputedRadiographyImageStorage,
        SecondaryCaptureImageStorage,
    )

    from cxr_results.uids import carries_our_marker

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3"
    assert not is_our_dataset(ds, ROOT)
    ds.SeriesInstanceUID = result_uids(ROOT, "1.2", 1).sc_series_instance_uid
    assert is_our_dataset(ds, ROOT)
    ds.SOPClassUID = ComprehensiveSRStorage
    assert is_our_dataset(ds, ROOT)
    ds.SOPClassUID = ComputedRadiographyImageStorage  # a class we never create
    assert not is_our_dataset(ds, ROOT)
    renamed = Dataset()  # our marker alone (a spoof, or a PACS that re-assigned the UIDs)
    renamed.SOPClassUID = SecondaryCaptureImageStorage
    renamed.SOPInstanceUID = "1.2.3.4"
    renamed.Manufacturer = "cxr-triage"
    renamed.SeriesDescription = "cxr-triage heatmap cxr-pneumonia 1.0.0"
    assert not is_our_dataset(renamed, ROOT)
    assert carries_our_marker(renamed)
    renamed.Manufacturer = "Other Vendor"
    assert not carries_our_marker(renamed)


def test_default_root_is_created_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "uid-root"
    first = load_or_create_uid_root(path)
    assert first.startswith("2.25.")
    assert load_or_create_uid_root(path) == first
    assert load_or_create_uid_root(path, configured=" 1.2.3 ") == "1.2.3"
    assert [p.name for p in path.parent.iterdir()] == ["uid-root"]


# ----------------------------------------------------------------- which objects go where


def test_every_object_goes_to_a_destination_by_default() -> None:
    (pacs,) = parse_destinations("PACS@pacs.example.org:104")
    assert pacs.objects == ALL_OBJECTS == {ResultObject.SC, ResultObject.SR, ResultObject.SEG}


def test_a_destination_can_pick_its_objects() -> None:
    pacs, viewer, v6 = parse_destinations(
        "PACS@pacs:104, VIEWER@10.0.0.9:104[sr+seg], OLD@[fd00::7]:11112[ SC ]"
    )
    assert pacs.objects == ALL_OBJECTS
    assert viewer.objects == {ResultObject.SR, ResultObject.SEG}
    assert (str(viewer), viewer.wants(ResultObject.SC)) == ("VIEWER@10.0.0.9:104", False)
    assert (v6.host, v6.port, v6.objects) == ("fd00::7", 11112, {ResultObject.SC})
    # the selection is not part of the destination's identity (its sends' key)
    assert viewer == Destination("VIEWER", "10.0.0.9", 104)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("V@h:104[pm]", "unknown result object 'pm'"),
        ("V@h:104[sr+x]", "unknown result object 'x'"),
        ("V@h:104[]", "empty object name"),
        ("V@h:104[sr+]", "empty object name"),
        ("V@h:104[sr+sr]", "'sr' is listed twice"),
        ("V@h:104[sr", "unclosed '\\[' in the object list"),
        ("V@h:[sr]", "port '' is not a number"),
        ("V@[fd00::7:104", "expected AE_TITLE@host:port"),
    ],
)
def test_bad_object_lists_are_named_in_a_clear_error(entry: str, message: str) -> None:
    with pytest.raises(DestinationConfigError, match=message) as caught:
        parse_destinations(f"PACS@pacs:104,{entry}")
    assert isinstance(caught.value, ConfigurationError)


def test_the_same_destination_with_two_selections_is_listed_twice() -> None:
    with pytest.raises(DestinationConfigError, match="listed twice"):
        parse_destinations("PACS@pacs:104[sr],PACS@pacs:104[sc]")
