"""What the ``vmd`` commands print and how they end: the two consoles, the one-line error, and the
wrapper that turns the library's errors, faults and signals into exit codes."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmd.runtime.distributed import RankError, env_rank, launched
from vmd.runtime.errors import VmdError


# how gloo and NCCL say that the other side of a collective has gone
_LOST_PEER = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|NCCL communicator was aborted")


class _Out(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`vmd sample ... | head`): done, quietly, exit 0 (rich's own exits 1)."""
        self.quiet = True
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


out = _Out()
err = Console(stderr=True, quiet=env_rank() != 0)  # under torchrun, rank 0 alone reports


def print_error(message: str, console: Console | None = None) -> None:
    (console or err).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    print_error(message)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training (which saves first): unwinds like Ctrl-C, so that work in flight
    is dropped the same way, and exits 143 as a process ended by SIGTERM would."""


def friendly(fn):
    """Turn the library's user-facing errors, file-system faults and interruptions into one line on
    stderr: exit 2 for an error, 130 for Ctrl-C, 143 for SIGTERM."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RankError as e:  # this process's own: every rank says it (``err`` is rank 0's), naming itself
            print_error(f"rank {env_rank()}: {e}" if launched() else str(e), Console(stderr=True))
            raise typer.Exit(2)
        except VmdError as e:
            fail(str(e))
        except KeyboardInterrupt as e:
            term = isinstance(e, Terminated)
            err.print("terminated" if term else "interrupted")
            raise typer.Exit(143 if term else 130)
        except RuntimeError as e:
            lost = _LOST_PEER.search(str(e)) if launched() else None
            if lost is None:
                raise
            # another process died (killed, out of memory): this one's collective broke; that one is the cause
            print_error(f"rank {env_rank()}: lost contact with another process, which stopped first "
                        f"({lost.group(0)})", Console(stderr=True))
            raise typer.Exit(2)
        except OSError as e:
            if e.errno == errno.EPIPE:  # the reader went away (`vmd sample ... | head`): done, quietly
                with contextlib.suppress(OSError):  # no flush of what is left at exit, no 'Exception ignored'
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(0)
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")

    return wrapper


def terminate(signum, frame):
    """SIGTERM's handler outside training: unwind as :class:`Terminated`."""
    raise Terminated()


def show_metrics(metrics: dict, title: str, caption: str, as_json: bool) -> None:
    """One JSON object on stdout, or a two-column table of the metrics."""
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) and v == v else str(v))
    out.print(table)
