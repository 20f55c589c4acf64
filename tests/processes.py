"""The environment the tests and benchmarks give the processes they start: nothing of this machine's
own configuration, only how to find programs (and the checkout, when it is run without installing);
and what became of a process started."""

import os
from pathlib import Path


def child_environment(**extra: str) -> dict[str, str]:
    environment = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    environment.update(extra)
    return environment


def child_state(pid: int) -> str | None:
    """Return the state /proc gives a child of this process: "Z" for a zombie (it ended, but nobody
    reaped it), "R", "S", "D", ... while it lives; None once it is gone (or its number went to another
    process's)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if int(fields["PPid"]) != os.getpid():
        return None
    return fields["State"].split()[0]
