"""Where the tests find the repository's files (one definition instead of one per test file)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
MODELS = ASSETS / "models"
EXAMPLES = ASSETS / "examples"
BUNDLED_DCNV3 = MODELS / "dcnv3-yolov8n.pt"
BUNDLED_PLAIN = MODELS / "yolov8n.pt"
DEMO_VIDEO = ASSETS / "demo_shapes.mp4"
DATA = ROOT / "tests" / "data"
FORKS = DATA / "forks"
FORK_A = DATA / "fork_fixture" / "fork_A.pt"
FORK_A_EXPECTED = DATA / "fork_fixture" / "fork_A_expected.pt"
