"""A worker process: ``python -I -c <boot> BACKEND PARENT_PID`` (engine.worker_command).

Protocol: one JSON object per line.  The worker imports its backend's
framework (once) and writes ``{"state", "version", "detail",
"import_seconds"}`` (the probe's answer); it exits there unless the state is
``ok``.  Then it reads requests from stdin, one per line, until stdin
closes: ``{"cell": Cell.to_dict()}`` is answered with ``{"record":
Record.to_dict()}`` (harness.execution.child.run_cell), ``{"batch": [Cell
dicts]}`` (cells differing only in their seed) with one message of all
their records (child.run_batch, in child.pack_records' form), ``{"gradcheck":
{seed, gate, dtype, hidden}}`` with ``{"gradcheck": [...]}``
(child.gradients).  Floats travel as
Python's JSON (NaN allowed), which round-trips every float64 exactly; the
results writer makes them strict.  A message may carry a binary payload
(a batch's loss curves, as raw little-endian float64): its line says
``"payload_bytes": n`` and the n bytes follow it, unframed
(engine.Frames hands the message over with them as ``"payload"``);
as base64 inside the JSON line they cost a 1000-seed batch 70 ms.

A worker whose parent process is gone (``harness run``, or the Dask worker
that started it, killed with -9) exits within a second, even in the middle
of a cell that would never end: nobody is left to read its answer.

Only the protocol uses the real stdout: file descriptor 1 is pointed at
stderr so that anything a framework prints cannot corrupt it.  The parent
keeps stderr in a file and reads its tail when a worker dies.

A worker never outlives its parent, whatever it is computing: on Linux the
kernel kills it (SIGKILL) when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
elsewhere a watchdog thread checks every half second that its parent is
still the one that started it.  It ignores SIGINT and SIGTERM: Ctrl-C on a
terminal, or a SIGTERM sent to the whole process group, reaches every
process, and the parent alone decides what happens to its workers.
"""
from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# How often the portable fallback looks for its parent, in seconds.
WATCHDOG_SECONDS = 0.5


def die_with_parent(parent: int, from_main_thread: bool) -> None:
    """End this process as soon as process ``parent`` (the harness that
    started it) is gone, even in the middle of a computation that never
    returns to Python."""
    # The death signal fires when the *thread* that started us ends: armed
    # only when that is the parent's main thread (the local engine's), which
    # lives as long as the process; a Dask worker starts us from a pool
    # thread, so there the watchdog below is all.
    if from_main_thread and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # If the parent died before the call above, we were already re-parented
    # and no signal will come: check.
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    die_with_parent(int(argv[1]), from_main_thread=argv[2:3] == ["main"])
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    # A segfault then leaves a Python traceback in stderr for the record:
    # the crashing thread's only (not the parent watchdog's).
    faulthandler.enable(all_threads=False)
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr  # Python-level prints too, unbuffered, in order

    def send(obj, payload: bytes = b"") -> None:
        sys.stderr.flush()  # this cell's stderr is in the file before its answer
        if payload:
            obj = {**obj, "payload_bytes": len(payload)}
        protocol.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        if payload:
            protocol.write(payload)
        protocol.flush()

    name = argv[0]

    from harness.execution.child import (gradients, import_framework, pack_records,
                                         run_batch, run_cell)
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
        elif "batch" in request:
            cells = [Cell.from_dict(d) for d in request["batch"]]
            send(*pack_records(run_batch(cells, avail.version)))
        else:
            send({"gradcheck": gradients(name, request["gradcheck"])})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
