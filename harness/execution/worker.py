"""A worker process: ``python -I -m harness.execution.worker BACKEND``.

Protocol: one JSON object per line.  The worker imports its backend's
framework (once) and writes ``{"state", "version", "detail",
"import_seconds"}`` (the probe's answer); it exits there unless the state is
``ok``.  Then it reads requests from stdin, one per line, until stdin
closes: ``{"cell": Cell.to_dict()}`` is answered with ``{"record":
Record.to_dict()}`` (harness.execution.child.run_cell), ``{"gradcheck":
{seed, gate, dtype, hidden}}`` with ``{"gradcheck": [...]}``
(child.gradients).  Floats travel as
Python's JSON (NaN allowed), which round-trips every float64 exactly; the
results writer makes them strict.

A worker whose parent process is gone (``harness run``, or the Dask worker
that started it, killed with -9) exits within a second, even in the middle
of a cell that would never end: nobody is left to read its answer.

Only the protocol uses the real stdout: file descriptor 1 is pointed at
stderr so that anything a framework prints cannot corrupt it.  The parent
keeps stderr in a file and reads its tail when a worker dies.
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time


def main(argv: list[str]) -> int:
    # Ctrl-C on a terminal reaches the whole process group; the parent alone
    # decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A segfault then leaves a Python traceback in stderr for the record:
    # the crashing thread's only (not the parent watch's below).
    faulthandler.enable(all_threads=False)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr  # Python-level prints too, unbuffered, in order

    def send(obj) -> None:
        sys.stderr.flush()  # this cell's stderr is in the file before its answer
        protocol.write(json.dumps(obj, separators=(",", ":")) + "\n")
        protocol.flush()

    name = argv[0]

    from harness.execution.child import gradients, import_framework, run_cell
    from harness.tasks import Cell

    t0 = time.perf_counter()
    avail = import_framework(name)
    send({"state": avail.state, "version": avail.version, "detail": avail.detail,
          "import_seconds": time.perf_counter() - t0})
    if not avail.ok:
        return 0
    for line in sys.stdin:
        request = json.loads(line)
        if "cell" in request:
            record = run_cell(Cell.from_dict(request["cell"]), avail.version)
            send({"record": record.to_dict()})
        else:
            send({"gradcheck": gradients(name, request["gradcheck"])})
    return 0


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
