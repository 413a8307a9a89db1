"""The one rule for real peers (tests/peers.py): a missing peer skips locally, with what to
install, and fails under CI=true, naming what is missing."""

from __future__ import annotations

import pytest

from tests import peers


@pytest.fixture
def absent(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(
        peers.PEERS, "absent", peers.Peer(("cxr-no-such-tool", "/nonexistent/tool"), "nothing")
    )
    return "absent"


def test_a_missing_peer_skips_locally_with_its_reason(
    absent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cxr-no-such-tool, /nonexistent/tool"):
        peers.require_peer(absent)


def test_a_missing_peer_fails_under_ci(absent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true.*cxr-no-such-tool"):
        peers.require_peer(absent)


def test_present_tools_pass_and_unknown_names_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(peers.PEERS, "shell", peers.Peer(("sh", "/bin/sh"), "dash"))
    monkeypatch.setenv("CI", "true")
    peers.require_peer("shell")  # neither skips nor fails
    assert peers.have_peer("shell")
    with pytest.raises(ValueError, match="unknown peers"):
        peers.requires_peer("no-such-peer")


def test_the_mark_is_checked_before_each_test(
    absent: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """tests/conftest.py's setup hook applies the rule to every test carrying the mark."""
    from tests.conftest import pytest_runtest_setup

    request.node.add_marker(peers.requires_peer(absent))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cxr-no-such-tool"):
        pytest_runtest_setup(request.node)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="cxr-no-such-tool"):
        pytest_runtest_setup(request.node)
