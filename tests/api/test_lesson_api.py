"""The /watch_learn endpoint of a served app: the snapshots of a short run, and two sessions at once
(the second waits for the first: one watch-it-learn run at a time in the app)."""

import threading

import pytest
from app_server import served_app
from gradio_client import Client


@pytest.fixture(scope="module")
def url():
    from viz_app.state.models import ModelRegistry

    with served_app(ModelRegistry()) as address:
        yield address


def test_watch_learn_endpoint_returns_the_snapshots(url):
    result = Client(url, verbose=False).predict(4, 10, api_name="/watch_learn")
    rows = result["snapshots"]
    assert result["iterations"] == 10 and [r["iteration"] for r in rows] == [0, 5, 10]
    assert rows[0]["mean_offset"] == 0.0 and rows[-1]["mean_offset"] > 0.3
    assert len(rows[-1]["points_xy"]) == 2 and len(rows[-1]["points_xy"][0]) == 9  # (G, P, (x, y))
    again = Client(url, verbose=False).predict(4, 10, api_name="/watch_learn")
    assert [r["loss"] for r in again["snapshots"]] == [r["loss"] for r in rows]  # deterministic for a seed


def test_two_sessions_run_one_after_the_other(url):
    results = {}

    def run(name):
        results[name] = Client(url, verbose=False).predict(5, 15, api_name="/watch_learn")

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    first, second = sorted(results.values(), key=lambda r: r["started"])
    assert second["started"] >= first["finished"] - 0.05  # the second waited in the queue
    assert [r["loss"] for r in first["snapshots"]] == [r["loss"] for r in second["snapshots"]]
