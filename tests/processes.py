"""The environment the tests and benchmarks give the processes they start: nothing of this machine's
own configuration, only how to find programs (and the checkout, when it is run without installing)."""

import os


def child_environment(**extra: str) -> dict[str, str]:
    environment = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    environment.update(extra)
    return environment
