"""The worklist's arrival tiebreak, exercised: studies with equal scores (and equal flags)
are listed by arrival, the earlier first, whatever their row ids say; the paged worklist
resumes across the tie in the same order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, update

from cxr_db.instances import writes as repo
from cxr_db.instances.tables import Study
from cxr_db.worklist import reads as reads
from cxr_db.worklist.reads import ReadView, WorklistQuery
from tests.db_rows import prediction, record

pytestmark = pytest.mark.integration


def _arrivals(engine: Engine, hours_ago: dict[str, int]) -> None:
    """Set each study's arrival ``hours_ago`` before now (rows keep their ids)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for study, hours in hours_ago.items():
            conn.execute(
                update(Study)
                .where(Study.study_instance_uid == study)
                .values(first_received_at=now - timedelta(hours=hours))
            )


@pytest.mark.parametrize("probability", [0.91, 0.12, None], ids=["flagged", "unflagged", "pending"])
def test_equal_scores_are_listed_by_arrival_the_earlier_first(
    engine: Engine, probability: float | None
) -> None:
    # recorded first (the lower ids), but arrived last
    late = [record(engine, f"1.20.{n}", f"1.20.{n}.1", accession=f"LATE{n}") for n in range(2)]
    early = [record(engine, f"1.21.{n}", f"1.21.{n}.1", accession=f"EARLY{n}") for n in range(2)]
    if probability is not None:
        for instance_id in late + early:
            repo.record_prediction(engine, instance_id, prediction(probability))
    _arrivals(engine, {"1.21.0": 4, "1.21.1": 3, "1.20.0": 2, "1.20.1": 1})
    with engine.begin() as conn:
        by_id = list(conn.execute(select(Study.accession_number).order_by(Study.id)).scalars())
    assert by_id == ["LATE0", "LATE1", "EARLY0", "EARLY1"]  # ids alone: another order

    entries = reads.worklist(engine)
    assert len({(e.flagged, e.score) for e in entries}) == 1  # a true tie on flag and score
    order = [e.accession_number for e in entries]
    arrival = [e.accession_number for e in sorted(entries, key=lambda e: e.received_at)]
    assert order == arrival
    assert order == ["EARLY0", "EARLY1", "LATE0", "LATE1"]

    # one entry per page: the cursor resumes after a tied row, in the same order
    paged: list[str | None] = []
    after = None
    while True:
        page = reads.worklist_page(engine, WorklistQuery(view=ReadView.ALL, limit=1, after=after))
        paged.extend(e.accession_number for e in page.entries)
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert paged == order
