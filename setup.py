"""Build step that pyproject.toml cannot state: put the bundled assets into the wheel.

The checkout keeps them in the top-level ``assets/`` folder (beside ``dcnv3/`` and ``viz_app/``),
which is not a package, so package-data cannot name it. A wheel (``pip wheel .``, ``pip install .``)
gets a copy at ``dcnv3/assets/``; ``dcnv3.bundled`` looks there first and then in the checkout.
The screenshots are the README's and stay out. An editable install reads the checkout's folder
and copies nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = ["models", "examples", "demo_shapes.mp4", "training_demo"]  # not screenshots/
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


class BuildWithAssets(build_py):
    """setuptools' build_py, then the shipped assets copied into the built dcnv3 package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "dcnv3" / "assets"
        for name in SHIPPED:
            source = ASSETS / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=IGNORED, dirs_exist_ok=True)
            elif source.is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithAssets})
