"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit one run; on Dataflow it returns
without waiting. Run as a script, Python puts this folder first on sys.path; drop it, so that
`pipeline/*.py` cannot shadow top-level modules and `pipeline` is the installed package.

Bad options exit 2 and a source that cannot be reached exits 1, each with one message and no
traceback (as `python -m pipeline run` does): the launcher's log shows what to fix."""

import logging
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from pipeline.options import OptionsError
    from pipeline.run import run_backfill
    from pipeline.sources.errors import SourceError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run_backfill(sys.argv[1:])
    except OptionsError as exc:
        print(exc)
        sys.exit(2)
    except SourceError as exc:
        message = " ".join(str(exc).split())
        print(f"the run could not start: the source did not answer: {message}")
        sys.exit(1)
    print(summary.render())
