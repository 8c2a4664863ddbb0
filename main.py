"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit one run; on Dataflow it returns
without waiting (the commit is the graph's own last step).

It sits at the repository root, beside the `pipeline` and `transforms` packages, as in Google's
`pipeline_with_dependencies` sample. It ends as `python -m pipeline run` does: bad options exit 2,
a source that cannot be reached 1, a warehouse another backfill holds 3, each in one line and no
traceback, so the launcher's log shows what to fix.
"""

import sys

from pipeline.run import configure_logging, run_and_report

if __name__ == "__main__":
    configure_logging("%(levelname)s %(name)s: %(message)s")
    code, _ = run_and_report(sys.argv[1:])
    sys.exit(code)
