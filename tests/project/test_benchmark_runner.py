"""``python -m benchmarks``: discovery, the BENCH_RESULT protocol and the markdown table (the
benchmarks themselves are not run here; ``python -m benchmarks --quick`` does that in minutes)."""

import importlib.util
import sys

from repo_paths import ROOT

BENCHMARKS = ROOT / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_benchmark_is_discovered_and_reports_a_machine_readable_line():
    runner = load("__main__")
    found = runner.discover()
    assert {"op", "model", "app"} <= set(found)
    for name, path in found.items():
        assert "emit(" in path.read_text(), f"{path.name} prints no BENCH_RESULT line"
        assert name in runner.QUICK_ARGS, f"{path.name} has no quick arguments"


def test_protocol_round_trip_and_verdicts(capsys):
    results = load("results")
    results.emit("x", [("a / b", 0.5, "<= 1"), ("c / d", 1.5, ">= 2"), ("e / f", 3.0, None)])
    (payload,) = results.parse(capsys.readouterr().out)
    assert payload["benchmark"] == "x"
    assert [row["ok"] for row in payload["rows"]] == [True, False, None]


def test_markdown_has_machine_table_and_one_row_per_ratio():
    runner = load("__main__")
    rows = [{"measure": "click / first run", "ratio": 0.04, "target": "<= 0.1", "ok": True}]
    text = runner.markdown(
        [
            {
                "name": "app",
                "rows": rows,
                "status": 0,
                "output": "",
                "seconds": 3.0,
                "command": "python benchmarks/bench_app.py",
            },
            {
                "name": "broken",
                "rows": [],
                "status": 1,
                "output": "Traceback\nValueError: x",
                "seconds": 1.0,
                "command": "python benchmarks/bench_broken.py",
            },
        ],
        quick=True,
    )
    assert "| CPU |" in text and "| torch |" in text and "| ultralytics |" in text and "| date |" in text
    assert "| app | click / first run | 0.040 | <= 0.1 | meets target |" in text
    assert "| broken | no result (exit status 1: ValueError: x) |" in text
    assert "Quick run" in text
