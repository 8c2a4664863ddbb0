"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit one run; on Dataflow it returns
without waiting (the commit is the graph's own last step).

It sits at the repository root, beside the `pipeline` and `transforms` packages, as in Google's
`pipeline_with_dependencies` sample. Bad options exit 2 and a source that cannot be reached exits 1,
each with one message and no traceback (as `python -m pipeline run` does): the launcher's log
shows what to fix.
"""

import logging
import sys

from pipeline.options import OptionsError
from pipeline.run import run_backfill
from pipeline.sources.errors import SourceError

if __name__ == "__main__":
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
