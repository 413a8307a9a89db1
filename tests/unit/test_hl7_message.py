"""The ORU^R01 built with hl7apy, read back with the independent ``hl7`` library; MLLP
framing; ACK parsing; ``CXR_HL7_DESTINATIONS`` and the MSH settings, bad values included."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import hl7
import pytest

from cxr_common.clinical import DISCLAIMER
from cxr_common.errors import ConfigurationError
from cxr_common.model_files import read_finding, shipped_model_dir
from cxr_common.settings import ResultSettings
from cxr_hl7 import (
    AckCode,
    AckError,
    AnalysisStatus,
    Hl7ConfigError,
    Hl7Destination,
    MessageHeader,
    Patient,
    Procedure,
    StudyResult,
    build_oru,
    escape,
    frame,
    message_control_id,
    parse_ack,
    parse_hl7_destinations,
    unframe,
)
from cxr_triage.cli import main

UID = "1.2.826.0.1.3680043.10.1024.99.1"
HEADER = MessageHeader("CXR_TRIAGE", "CXR", "RIS", "HOSPITAL")
NOW = datetime(2026, 12, 6, 8, 15, tzinfo=UTC)


def scored(**changes: object) -> StudyResult:
    result = StudyResult(
        study_instance_uid=UID,
        accession_number="ACC-42",
        patient=Patient("PAT-7", "HOSP", "Testpatient^Anna^B^Dr"),
        procedure=Procedure("XR Chest PA", "RPID17", "L"),
        study_datetime=datetime(2026, 12, 6, 7, 30),  # noqa: DTZ001 - DICOM local time
        result_version=1,
        corrects_earlier=False,
        status=AnalysisStatus.SCORED,
        score=0.91234,
        threshold=0.2834,
        flagged=True,
        score_interval=(0.85, 0.95),
        model_name="cxr-pneumonia",
        model_version="1.0.0-lite0-strong-e8",
        finding=read_finding(shipped_model_dir()),
        study_url=f"https://cxr.example/studies/{UID}",
    )
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]


def parse(result: StudyResult, control_id: str = "CID1") -> hl7.Message:
    return hl7.parse(build_oru(result, HEADER, control_id, NOW))


def obx(message: hl7.Message) -> dict[str, tuple[str, str, str]]:
    """OBX-3 code → (value type, unescaped OBX-5, OBX-11)."""
    return {
        str(s(3)(1)(1)): (str(s(2)), message.unescape(str(s(5))), str(s(11)))
        for s in message.segments("OBX")
    }


def test_a_flagged_study_reads_back_field_by_field() -> None:
    message = parse(scored())
    msh = message.segment("MSH")
    assert [str(msh(i)) for i in (3, 4, 5, 6)] == ["CXR_TRIAGE", "CXR", "RIS", "HOSPITAL"]
    assert str(msh(9)) == "ORU^R01^ORU_R01"
    assert (str(msh(10)), str(msh(11)), str(msh(12))) == ("CID1", "P", "2.5.1")
    pid = message.segment("PID")
    assert (str(pid(3)(1)(1)), str(pid(3)(1)(4))) == ("PAT-7", "HOSP")
    assert [str(pid(5)(1)(i)) for i in (1, 2, 3, 5)] == ["Testpatient", "Anna", "B", "Dr"]
    orc, obr = message.segment("ORC"), message.segment("OBR")
    assert (str(orc(1)), str(orc(2)), str(orc(3)), str(orc(5))) == ("RE", "ACC-42", "ACC-42", "CM")
    assert (str(obr(2)), str(obr(3))) == ("ACC-42", "ACC-42")
    assert str(obr(4)) == "RPID17^XR Chest PA^L"
    assert str(obr(7)) == "20261206073000"
    assert str(obr(25)) == "F"
    # priority stat, in each place a RIS may read it
    assert str(message.segment("TQ1")(9)) == "S^Stat^HL70485"
    assert str(obr(27)(1)(6)) == "S"
    assert str(orc(7)(1)(6)) == "S"
    assert message.unescape(str(message.segment("NTE")(3))) == DISCLAIMER
    rows = obx(message)
    assert rows["CXR-STATUS"][:2] == ("CWE", "SCORED^Scored^99CXR")
    assert rows["CXR-SCORE"][:2] == ("NM", "0.9123")
    assert rows["CXR-FLAG"][:2] == ("CE", "Y^Yes^HL70136")
    assert rows["CXR-THRESHOLD"][:2] == ("NM", "0.2834")
    assert rows["CXR-SCORE-LOW95"][:2] == ("NM", "0.8500")
    assert rows["CXR-SCORE-HIGH95"][:2] == ("NM", "0.9500")
    assert rows["CXR-FINDING"][:2] == ("CWE", "233604007^Pneumonia^SCT")
    assert rows["CXR-MODEL"][:2] == ("ST", "cxr-pneumonia 1.0.0-lite0-strong-e8")
    assert rows["110180"][:2] == ("ST", UID)
    assert rows["CXR-LINK"][:2] == ("RP", f"https://cxr.example/studies/{UID}^CXR_TRIAGE^TEXT^HTML")
    assert {r[2] for r in rows.values()} == {"F"}


def test_an_unflagged_study_sets_no_priority_and_a_new_version_is_a_correction() -> None:
    message = parse(scored(flagged=False, score=0.1, corrects_earlier=True, result_version=2))
    assert obx(message)["CXR-FLAG"][1] == "N^No^HL70136"
    with pytest.raises(KeyError):
        message.segment("TQ1")
    er7 = str(message)  # OBR-27 and ORC-7 empty: no change to the RIS, never lowered
    assert "^^^^^S" not in er7
    assert "^^^^^R" not in er7
    assert str(message.segment("OBR")(25)) == "C"
    assert {r[2] for r in obx(message).values()} == {"C"}


def test_without_an_accession_number_the_study_uid_is_the_order_number() -> None:
    long_uid = "1.2.826.0.1.3680043.10.1024." + "9" * 36  # 64 characters, the most a UID has
    assert len(long_uid) == 64
    message = parse(scored(accession_number=None, study_instance_uid=long_uid))
    for segment, fields in (("ORC", (2, 3)), ("OBR", (2, 3))):
        assert [str(message.segment(segment)(f)) for f in fields] == [long_uid, long_uid]
    assert obx(message)["110180"][1] == long_uid
    blank = parse(scored(accession_number="   "))
    assert str(blank.segment("OBR")(3)) == UID


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (AnalysisStatus.FAILED, "pixel data could not be decoded"),
        (AnalysisStatus.NOT_ELIGIBLE, "lateral view (ViewPosition LL) is not scored"),
    ],
)
def test_a_study_not_analysed_says_so_and_why_without_a_score(
    status: AnalysisStatus, reason: str
) -> None:
    result = scored(
        status=status,
        reason=reason,
        score=None,
        threshold=None,
        flagged=False,
        score_interval=None,
        model_name=None,
        model_version=None,
        finding=None,
    )
    message = parse(result)
    rows = obx(message)
    assert rows["CXR-STATUS"][1].startswith(f"{status.value}^Not analysed")
    assert rows["CXR-REASON"][1] == reason
    assert not {"CXR-SCORE", "CXR-FLAG", "CXR-THRESHOLD", "CXR-MODEL"} & rows.keys()
    assert message.unescape(str(message.segment("NTE")(3))) == DISCLAIMER


def test_an_outside_population_score_is_not_sent_as_a_score_or_a_flag() -> None:
    result = scored(
        status=AnalysisStatus.OUTSIDE_POPULATION, reason="age 60 y; model validated for 1-5 y"
    )
    message = parse(result)
    rows = obx(message)
    assert rows["CXR-STATUS"][1] == (
        "OUTSIDE_POPULATION^Not used for triage: outside validated population^99CXR"
    )
    assert rows["CXR-REASON"][1] == "age 60 y; model validated for 1-5 y"
    assert not {"CXR-SCORE", "CXR-FLAG", "CXR-SCORE-LOW95"} & rows.keys()
    assert rows["CXR-FINDING"][1] == "233604007^Pneumonia^SCT"  # what the model would score
    with pytest.raises(KeyError):
        message.segment("TQ1")  # never stat, even if the prediction said flagged


def test_header_values_cannot_add_fields_segments_or_blocks() -> None:
    hostile = "Evil|X\rOBX|99|ST|INJECTED\x0b\x1c~&\\H\\"
    result = scored(
        patient=Patient("ID|1~2&3", "HOSP^X", "Fam|ily^Gi\rven"),
        accession_number="ACC^1|2",
        procedure=Procedure(hostile),
        status=AnalysisStatus.NOT_ELIGIBLE,
        reason=hostile,
        score=None,
        threshold=None,
    )
    er7 = build_oru(result, HEADER, "CID1", NOW)
    message = hl7.parse(er7)
    assert [str(s[0]) for s in message] == [
        "MSH", "PID", "ORC", "OBR", "NTE", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX",
    ]  # fmt: skip
    assert "INJECTED" not in [str(s(3)) for s in message.segments("OBX")]
    pid = message.segment("PID")
    assert message.unescape(str(pid(3)(1)(1))) == "ID|1~2&3"
    assert message.unescape(str(pid(3)(1)(4))) == "HOSP^X"
    assert message.unescape(str(pid(5)(1)(1))) == "Fam|ily"
    assert message.unescape(str(pid(5)(1)(2))) == "Gi ven"
    assert message.unescape(str(message.segment("ORC")(2))) == "ACC^1|2"
    assert obx(message)["CXR-REASON"][1] == "Evil|X OBX|99|ST|INJECTED  ~&\\H\\"
    assert unframe(frame(er7)) == er7  # no block character survived


def test_no_patient_id_or_name_is_an_hl7_null_and_names_travel_as_utf8() -> None:
    message = parse(scored(patient=Patient(None, None, None)))
    assert (str(message.segment("PID")(3)), str(message.segment("PID")(5))) == ('""', '""')
    er7 = build_oru(scored(patient=Patient("P1", None, "Müller^Zoë")), HEADER, "C", NOW)
    assert "\\" not in er7.split("\r")[1]
    assert frame(er7).startswith(b"\x0b")
    assert frame(er7).endswith(b"\x1c\r")
    assert "Müller^Zoë" in unframe(frame(er7))


def test_the_message_control_id_is_stable_per_study_and_version() -> None:
    first = message_control_id(UID, 1)
    assert first == message_control_id(UID, 1)
    assert first != message_control_id(UID, 2)
    assert first != message_control_id(UID + "1", 1)
    assert len(first) == 20
    assert first.isalnum()


def test_escape_follows_the_default_delimiters() -> None:
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("line\r\nnext\x00") == "line  next "


def test_unframe_refuses_what_is_not_one_block() -> None:
    for bad in (b"MSH|x", b"\x0bMSH|x", b"MSH|x\x1c\r", b"\x0b\xff\xfe\x1c\r"):
        with pytest.raises(ValueError, match="MLLP|UTF-8"):
            unframe(bad)
    with pytest.raises(ValueError, match="block characters"):
        frame("MSH|\x0b")


ACK = "MSH|^~\\&|RIS|H|CXR|C|20261206||ACK^R01^ACK|A1|P|2.5.1\rMSA|{code}|{cid}{text}"


@pytest.mark.parametrize(
    ("code", "accepted"),
    [("AA", True), ("CA", True), ("AE", False), ("AR", False), ("CE", False), ("CR", False)],
)
def test_each_acknowledgement_code(code: str, accepted: bool) -> None:
    ack = parse_ack(ACK.format(code=code, cid="CID1", text=""), "CID1")
    assert (ack.code, ack.accepted, ack.text) == (AckCode(code), accepted, None)


def test_an_error_ack_carries_msa3_and_the_err_segment() -> None:
    text = "|Unknown order\rERR|||207^Application error^HL70357|E||||Accession ACC-42 \\T\\ x"
    ack = parse_ack(ACK.format(code="AE", cid="CID1", text=text), "CID1")
    assert ack.text == "Unknown order; Accession ACC-42 & x"
    v23 = "\rERR|OBR^1^3^^^Bad filler"  # v2.3: ERR-1
    assert parse_ack(ACK.format(code="AR", cid="CID1", text=v23), "CID1").text == (
        "OBR 1 3   Bad filler"
    )


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("this is not an acknowledgement", "not an HL7 message"),
        ("", "not an HL7 message"),
        ("MSH|^~\\&|RIS||||20261206||ACK|A1|P|2.5.1", "no MSA"),
        (ACK.format(code="XX", cid="CID1", text=""), "not an acknowledgement code"),
        (ACK.format(code="AA", cid="OTHER", text=""), "answers message 'OTHER'"),
    ],
)
def test_an_answer_that_is_no_ack_of_our_message_is_an_ack_error(answer: str, said: str) -> None:
    with pytest.raises(AckError, match=said):
        parse_ack(answer, "CID1")


def test_destinations_parse() -> None:
    assert parse_hl7_destinations(" ris.example.org:2575 , 10.0.0.9:6661,, [fd00::9]:2575 ") == (
        Hl7Destination("ris.example.org", 2575),
        Hl7Destination("10.0.0.9", 6661),
        Hl7Destination("fd00::9", 2575),
    )
    assert str(Hl7Destination("fd00::9", 2575)) == "[fd00::9]:2575"
    assert parse_hl7_destinations("") == parse_hl7_destinations(None) == ()


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("ris", "no ':port' found"),
        ("ris:abc", "port 'abc' is not a number"),
        ("ris:0", "outside 1-65535"),
        ("ris:70000", "outside 1-65535"),
        (":2575", "host before ':' is empty"),
        ("RIS@ris:2575", "no AE title, scheme or path"),
        ("mllp://ris:2575", "no AE title, scheme or path"),
        ("fd00::9:2575", "IPv6 address in brackets"),
        ("[fd00::zz]:2575", "not an IPv6 address"),
        ("[fd00::9:2575", "no ':port' found|unclosed"),
        ("bad host:2575", "not a host name"),
        ("ris:2575,ris:2575", "listed twice"),
    ],
)
def test_bad_destinations_are_refused_naming_the_entry(value: str, said: str) -> None:
    with pytest.raises(Hl7ConfigError, match=said) as info:
        parse_hl7_destinations(value)
    assert "CXR_HL7_DESTINATIONS entry" in str(info.value)


def test_send_results_refuses_a_malformed_hl7_destination_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CXR_RESULT_DESTINATIONS", raising=False)
    monkeypatch.setenv("CXR_HL7_DESTINATIONS", "ris.example.org:2575,ris:port")
    assert main(["send-results"]) == 2
    err = capsys.readouterr().err
    assert "'ris:port'" in err
    assert "not a number" in err


def test_hl7_settings_defaults_and_bad_msh_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HL7_DESTINATIONS", "HL7_SENDING_APPLICATION", "HL7_TIMEOUT_S"):
        monkeypatch.delenv(f"CXR_{name}", raising=False)
    settings = ResultSettings()
    assert (settings.hl7_destinations, settings.hl7_sending_application) == ("", "CXR_TRIAGE")
    assert settings.hl7_timeout_s == 30
    assert settings.with_overrides(hl7_receiving_facility=" HOSP ").hl7_receiving_facility == "HOSP"
    for bad in ("A|B", "A^B", "A&B", "A~B", "A\\B", "X" * 21, "Zoë", "A\rB"):
        with pytest.raises(ConfigurationError, match="CXR_HL7_SENDING_APPLICATION"):
            settings.with_overrides(hl7_sending_application=bad)
    for timeout in (0, -1, 301):
        with pytest.raises(ConfigurationError, match="CXR_HL7_TIMEOUT_S"):
            settings.with_overrides(hl7_timeout_s=timeout)
