"""One line for an error, for the tools' ``tool: error: ...`` messages.

Errors raised inside DataLoader workers reach the trainer re-raised by torch with the worker's
whole traceback as their message ("Caught DataError in DataLoader worker process 0. Original
Traceback ..."); a torch.save that fails on a full disk raises a RuntimeError from the C++ writer
whose cause, the OSError, is the part that says what happened. ``one_line`` finds the message a
person needs in both, and keeps any other error's first line.
"""
from __future__ import annotations

from typing import Optional


def root_os_error(e: BaseException) -> Optional[OSError]:
    """The first OSError in ``e``'s cause/context chain (``e`` itself included), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


def one_line(e: BaseException) -> str:
    text = str(e)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is the error
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
        name, sep, msg = last.partition(": ")
        is_type = sep and " " not in name and name.endswith(("Error", "Exception", "Interrupt"))
        return msg if is_type else last
    os_err = root_os_error(e)
    if os_err is not None and os_err.strerror:
        where = os_err.filename or ""
        return f"{where}: {os_err.strerror}" if where else f"{os_err.strerror} ({text.splitlines()[0] if text else ''})"
    lines = text.strip().splitlines()
    return lines[0] if lines else e.__class__.__name__
