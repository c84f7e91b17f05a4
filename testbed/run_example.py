"""Run a workflow end to end on the real ComfyUI with Steer loaded, and print the images it wrote.

    python -m testbed.run_example [WORKFLOW.json] [--output DIR]

WORKFLOW is a UI-format file (as saved by the web UI or shipped in example_workflows/) or an API prompt;
the default is the first example. The test bed has only its tiny models: the examples' real checkpoints are swapped
for them, and sizes and steps are capped (testbed/swap.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.comfy import ROOT
from testbed.examples import EXAMPLES
from testbed.server import ComfyServer, ServerError
from testbed.swap import for_testbed
from testbed.workflow import ui_to_api


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, nargs="?", default=next(iter(EXAMPLES.values())).path)
    parser.add_argument("--output", type=Path, default=ROOT / "output", help="where images go (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the prompt")
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    try:
        with ComfyServer(args.output) as server:
            print(f"ComfyUI at {server.url}, log {server.log_path}", file=sys.stderr)
            prompt = ui_to_api(workflow, server.object_info()) if "nodes" in workflow else workflow
            images = server.run(for_testbed(prompt), timeout=args.timeout)
    except ServerError as error:
        print(error, file=sys.stderr)
        return 1
    for path in images:
        print(path)
    return 0 if images else 1


if __name__ == "__main__":
    sys.exit(main())
