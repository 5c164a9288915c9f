"""Reading GET /metrics in tests. The counters live in the process, shared by every app a test builds:
compare a scrape before and after the journey, never absolute values."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-" + "x" * 24


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> dict:
    """/metrics through the app's test client (the app needs IDP_METRICS_TOKEN=TOKEN)."""
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return samples(resp.get_data(as_text=True))


class Meter:
    """``m = Meter(client)``; after the journey ``m.delta("idp_signins_total", method=…, result=…)``."""

    def __init__(self, client):
        self.client = client
        self.before = scrape(client)

    def delta(self, name: str, **labels) -> float:
        return value(scrape(self.client), name, **labels) - value(self.before, name, **labels)
