"""Shared pieces of the robustness suite (imported by its test modules): the fixture paths, and
the servers of tests/app_server.py (a free loopback port, ``python app.py`` in a subprocess).

The suite's servers run as separate processes where it matters what the *server* does (its memory,
its sockets, its files); in-process servers (``viz_app.ui.build_app``) elsewhere, as in
tests/api/test_app_api.py. The network guard of tests/conftest.py applies here too.
"""

from app_server import OFFLINE_ENV, ROOT, app_process  # noqa: F401 - re-exported

FORK_A = ROOT / "tests" / "data" / "fork_fixture" / "fork_A.pt"
EXAMPLES = ROOT / "assets" / "examples"
