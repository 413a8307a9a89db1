"""Reading Prometheus text in tests: parse it with prometheus-client's own parser and look
samples up by name and labels."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support import wait_until


@dataclass(frozen=True)
class Scrape:
    """One parsed exposition: every sample, and each family's type by name."""

    samples: tuple[Sample, ...]
    types: Mapping[str, str]

    def value(self, name: str, **labels: str) -> float:
        """The one sample called ``name`` whose labels include ``labels``."""
        found = [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return float(found[0].value)

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        found = [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return float(found[0].value) if found else default

    def label_values(self, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if label in s.labels}

    def named(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]


def parse(text: str) -> Scrape:
    families = list(text_string_to_metric_families(text))
    return Scrape(tuple(s for f in families for s in f.samples), {f.name: f.type for f in families})


def fetch(url: str, headers: Mapping[str, str] | None = None) -> Scrape:
    response = httpx.get(url, headers=dict(headers or {}), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def poll(
    url: str, until: Callable[[Scrape], bool], timeout_s: float = 120, what: str = "metrics"
) -> Scrape:
    """Scrape ``url`` until ``until`` holds (a process that is still starting answers
    nothing yet): for counters a process updates after the work it counts."""
    seen: list[Scrape | Exception] = []

    def matched() -> Scrape | None:
        try:
            last = fetch(url)
        except httpx.TransportError as exc:
            seen.append(exc)
            return None
        seen.append(last)
        return last if until(last) else None

    return wait_until(
        matched,
        timeout_s,
        lambda: f"{what} at {url} matched (last seen: {seen[-1] if seen else None})",
        interval=0.2,
    )
