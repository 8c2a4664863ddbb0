"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit one run; on Dataflow it returns
without waiting. Run as a script, Python puts this folder first on sys.path; drop it, so that
`pipeline/*.py` cannot shadow top-level modules and `pipeline` is the installed package."""

import logging
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from pipeline.run import run_backfill

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(run_backfill(sys.argv[1:]).render())
