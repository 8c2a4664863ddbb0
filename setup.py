"""Packages the pipeline for Dataflow workers (`--setup_file`) and for a local install."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="polymarket-trade-backfill",
    version="0.1.0",
    description="Backfills Polymarket wallets' trade history (Polymarket's API, or Dome's) into a warehouse.",
    # simulator too: `python -m pipeline simulate` and `demo` import it, from any folder.
    packages=find_packages(
        include=["pipeline", "pipeline.*", "transforms", "transforms.*", "simulator", "simulator.*"]
    ),
    python_requires=">=3.11",
    install_requires=_requirements(),
    entry_points={"console_scripts": ["trade-backfill=pipeline.__main__:main"]},
)
