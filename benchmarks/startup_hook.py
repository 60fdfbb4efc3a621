"""What the start-up hook (``checkpoint_records.pth``) costs a Python process that never trains (issue 25).

Every Python process of an environment with the package runs the ``.pth`` line: it imports the package's
``__init__`` and ``startup`` and puts one finder first on ``sys.meta_path``, which every later import of
a module not yet loaded asks first. Figures, medians over ``--rounds`` fresh processes:

* **at start**: ``-X importtime`` of ``python -c pass``, the two modules' own time (the first import from
  site-packages also lists that folder, which the first other package imported from there would do);
* **each later import**: the finder's answer for a module that is not the Trainer's (``timeit``);
* ``python -c pass`` itself, for scale.

    .venv/bin/python benchmarks/startup_hook.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import timeit

from common import cell, machine_description, median, table

from checkpoint_records.startup import TrainerWatch

HOOK_MODULES = ("checkpoint_records", "checkpoint_records.startup")
CALLS = 1_000_000


def hook_import_milliseconds() -> float:
    """The self time of the hook's modules in one fresh ``python -c pass``, from ``-X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    found = (
        re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)$", line) for line in result.stderr.splitlines()
    )
    return sum(int(match.group(1)) for match in found if match and match.group(2) in HOOK_MODULES) / 1e3


def start_milliseconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    print(machine_description())
    own = [hook_import_milliseconds() for _ in range(options.rounds)]
    starts = [start_milliseconds() for _ in range(options.rounds)]
    watch = TrainerWatch()
    answers = timeit.repeat(lambda: watch.find_spec("json.decoder"), number=CALLS, repeat=options.rounds)
    rows = [
        ["`python -c pass`, whole start (ms)", cell(median(starts))],
        ["the hook's two modules, at start (ms)", cell(median(own), 3)],
        ["the finder, per later import (µs)", cell(median(answers) / CALLS * 1e6, 3)],
    ]
    print(table([f"median of {options.rounds}", "value"], rows))


if __name__ == "__main__":
    main()
