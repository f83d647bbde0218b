"""What both command lines (``edgevae`` and ``edgevae-train``) share: the guard that turns library
errors into one ``Error: ...`` line with exit code 2 and Ctrl-C / SIGTERM into ``interrupted`` with
exit code 130, the click group whose usage errors are one line too, and the one writer of stdout
(:func:`echo`, :func:`write_stdout`): a full stdout or a closed pipe is an OutputError like any
other unwritable output, never a traceback. Also where a command's outputs go (a file, a folder, or
``-`` for stdout: :func:`write_output`), its summary (:func:`report`) and its progress bar.

Only this layer maps the typed exceptions of :mod:`edgevae.runtime.errors` to messages; the
library raises, never prints or exits.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import sys
from typing import Any, Callable, Iterator, Sequence, TypeVar

import click

from edgevae.runtime.errors import EdgeVAEError, OutputError

F = TypeVar("F", bound=Callable[..., Any])


#: Exit code of a command stopped by Ctrl-C (SIGINT) or SIGTERM, as shells report SIGINT.
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """``text`` with control characters escaped (a newline in a file name stays ``\\n``), so an
    error message is always exactly one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for ch in text)


def _error(message: str) -> None:
    click.echo(f"Error: {one_line(message)}", err=True)


# -- stdout -----------------------------------------------------------------------------------------
# Every byte a command writes to stdout goes through write_stdout (text through echo), which
# flushes at once: a full stdout (/dev/full: ENOSPC) or a closed pipe (EPIPE) then fails inside
# the command, where guard turns it into one line and exit code 2.


def _stdout_failed(error: BaseException) -> OutputError:
    """The error for a failed write to stdout, after pointing fd 1 at /dev/null: Python flushes
    stdout again at exit, and that flush must find nothing to fail on (no "Exception ignored ...
    BrokenPipeError" at shutdown)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return OutputError(f"stdout: cannot write ({getattr(error, 'strerror', None) or error})")


def write_stdout(data: bytes) -> None:
    """Write ``data`` to stdout and flush; OutputError if stdout is closed, full or a closed pipe."""
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        raise OutputError("stdout: is closed, nothing can be written to it")
    try:
        sys.stdout.flush()  # text echoed before stays before these bytes
        stream.write(data)
        stream.flush()
    except (OSError, ValueError) as e:
        raise _stdout_failed(e) from None


def echo(message: str = "", err: bool = False) -> None:
    """One line of text (a newline is added) to stdout, or to stderr with ``err``.

    Text for stdout goes through :func:`write_stdout`; stderr carries progress and errors, and
    a failure to write it has nowhere to be reported, so it is left to click.
    """
    if err:
        click.echo(message, err=True)
        return
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    write_stdout((message + "\n").encode(encoding, "replace"))


def flush_stdout() -> None:
    """Flush what was written to stdout by other means (``print``); OutputError if that fails."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        raise _stdout_failed(e) from None


# -- outputs, summaries, progress --------------------------------------------------------------------

#: The file name that means stdout (as it means stdin for inputs: edgevae.runtime.inputs.STDIO).
STDOUT = "-"

#: Batches at least this large show a progress bar on stderr.
PROGRESS_MIN_IMAGES = 2000


def check_file_target(out: str, force: bool, if_folder: str | None = None) -> None:
    """Before the work: OutputError unless the file ``out`` can be written (``-``, stdout, always
    can); ``if_folder`` is the advice when ``out`` is a folder (default: outputs.check_target's)."""
    from pathlib import Path

    from edgevae.runtime.outputs import check_target

    if out == STDOUT:
        return
    if if_folder is not None and Path(out).is_dir():
        raise OutputError(f"{out}: is a folder; {if_folder}")
    check_target(Path(out), force)


def write_output(images: Any, out: str, force: bool, names: list[str] | None = None) -> list[str]:
    """Write uint8 (N, C, H, W) ``images`` to ``out`` (a .png, a .npy, a folder; see
    :func:`edgevae.runtime.outputs.write_images`); ``-`` is one PNG (a grid if several) on stdout.
    Returns the paths written, ``["-"]`` for stdout."""
    from edgevae.runtime.outputs import picture_png, write_images

    if out == STDOUT:
        write_stdout(picture_png(images))
        return [STDOUT]
    return [str(p) for p in write_images(images, out, names=names, force=force)]


def write_blobs(blobs: Sequence[bytes], out: str, force: bool, names: Sequence[str] | None = None,
                suffix: str = "") -> list[str]:
    """Write one file's bytes to ``out`` (``-``: stdout), or with ``names`` one NAME+suffix per
    blob into the folder ``out``, all targets checked first and all or nothing."""
    from edgevae.runtime.outputs import atomic_write_bytes, write_folder

    if names is not None:
        return [str(p) for p in write_folder(out, blobs, names, suffix, force)]
    if out == STDOUT:
        write_stdout(blobs[0])
        return [STDOUT]
    return [str(atomic_write_bytes(out, blobs[0], force))]


def report(as_json: bool, summary: tuple[dict[str, Any], str]) -> None:
    """A command's summary (JSON fields, text line; :mod:`edgevae.runtime.reports`): on stdout, or
    on stderr when stdout carries the output itself."""
    fields, text = summary
    echo(json.dumps(fields) if as_json else text, err=STDOUT in fields.get("outputs", ()))


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A click progress bar on stderr for long batches (``None`` for short ones, and when stderr is
    not a terminal: a script reading stderr then sees only the one-line error or nothing)."""
    if total < PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_listening() -> None:
    """After an interrupt the process is ending: ignore further Ctrl-C / SIGTERM, so pressing it
    again while threads and sessions wind down cannot cut the exit short (exit code 130 stays)
    nor print a traceback from the interpreter's shutdown."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def guard(fn: F) -> F:
    """Run a command; turn expected failures into one ``Error: ...`` line and exit code 2.

    Ctrl-C and SIGTERM stop the command (outputs are all or nothing, see
    :mod:`edgevae.runtime.outputs`) with the line ``interrupted`` and exit code 130.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import threading

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
        try:
            result = fn(*args, **kwargs)
            flush_stdout()  # inside the guard: a write that only fails when flushed is reported too
            return result
        except EdgeVAEError as e:
            _error(str(e))
            sys.exit(2)
        except MemoryError:
            _error("out of memory; process fewer images at a time")
            sys.exit(2)
        except ImportError as e:
            # Under a memory limit, loading a library's shared object fails like this (imports are lazy).
            if not any(s in str(e) for s in ("failed to map segment", "Cannot allocate memory")):
                raise
            _error("out of memory (while loading a library); process fewer images at a time")
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            _stop_listening()
            sys.exit(EXIT_INTERRUPTED)
        finally:
            if main_thread and signal.getsignal(signal.SIGTERM) is _raise_interrupt:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return wrapper  # type: ignore[return-value]


class _OneLineUsageError(click.UsageError):
    """A usage error shown as one line (click shows four: usage, hint, blank, error)."""

    def show(self, file: Any = None) -> None:
        hint = f" Try '{self.ctx.command_path} --help'." if self.ctx is not None else ""
        click.echo(f"Error: {one_line(self.format_message())}{hint}", err=True, file=file)


def _one_line_usage(error: click.UsageError) -> click.UsageError:
    if isinstance(error, (_OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return error
    converted = _OneLineUsageError(error.format_message(), error.ctx)
    converted.exit_code = error.exit_code
    return converted


def _parse(make: Callable[[], click.Context]) -> click.Context:
    """Make a command's context (parse its arguments): usage errors become one line, and so does a
    full stdout or closed pipe met by --help or --version, which print while parsing."""
    try:
        return make()
    except click.UsageError as e:
        raise _one_line_usage(e) from None
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ENOSPC):
            raise
        _error(str(_stdout_failed(e)))
        sys.exit(2)


class Command(click.Command):
    """A click command whose usage errors are one line, like its group's, and whose --help output
    meets a full stdout or closed pipe with one line and exit code 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        return _parse(lambda: super(Command, self).make_context(*args, **kwargs))


class Group(click.Group):
    """A click group whose usage errors (bad option values, unknown commands, missing
    arguments) are one line and exit code 2, for the group and every command in it; --help and
    --version meet an unwritable stdout like the commands do (one line, exit code 2)."""

    command_class = Command

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        return _parse(lambda: super(Group, self).make_context(*args, **kwargs))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line_usage(e) from None
