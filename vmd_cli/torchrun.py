"""``python -m vmd_cli.torchrun [TORCHRUN OPTIONS] train [TRAIN OPTIONS]``: torchrun for vmd, ending
the way schedulers expect.

torchrun itself ends a job stopped by SIGTERM with a ``SignalException`` traceback and exit 1, and
follows every rank's error with a ``ChildFailedError`` traceback, so that a script requeueing on
143 never does. This runs the same launcher (``torch.distributed.run``: every torchrun option,
``--standalone``, ``--nnodes``, the rendezvous ones) on ``-m vmd_cli train ...`` and maps how it
ended onto one exit code, the ranks' own lines being the message (torchrun's logs are off unless
LOGLEVEL is set):

- 0: every process finished;
- 143 / 130: SIGTERM / SIGINT reached the launcher (or the ranks): they stopped after the same
  step and rank 0 saved it (``vmd train --resume`` continues);
- 2: a rank's error, which that rank has printed in one line above, or the launcher's own (a
  rendezvous that timed out), in one line;
- 128 + N: a rank was killed by signal N (e.g. 137 for SIGKILL, the kernel's out-of-memory
  killer among others); the others are stopped by the launcher; one line says which rank;
- any other code of a rank that failed otherwise, with one line naming it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from vmd_cli.console import print_error

COMMANDS = ("train",)  # the one command that runs data parallel; the others would run once per rank


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_code(failures: dict) -> int:
    """One exit code for the failed ranks (``{rank: ProcessFailure}``), from the first to fail (the
    launcher then stops the others, which therefore fail too), after saying what it means where that
    rank has not said so itself."""
    rank = min(failures, key=lambda r: failures[r].timestamp)
    code, pid = failures[rank].exitcode, failures[rank].pid
    if code in (2, 130, 143):  # its error line, or where it stopped and saved, is above
        return code
    if code < 0:  # killed by a signal
        print_error(f"rank {rank} (pid {pid}) was killed by {_signal_name(-code)}; the launcher stopped the others")
        return 128 - code
    print_error(f"rank {rank} (pid {pid}) exited with code {code}; its output is above")
    return code if 0 < code < 256 else 1


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "LOGLEVEL" not in os.environ:  # torchrun's logs repeat what the ranks and this say; LOGLEVEL=INFO shows them
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[0].replace("``", "") + "\n\nExample: python -m vmd_cli.torchrun --standalone "
              "--nproc_per_node 2 train --preset shakespeare-block4\n\nTORCHRUN OPTIONS: see torchrun --help.")
        sys.exit(0)
    args = parse_args(argv)
    if args.module or args.no_python or args.run_path:
        print_error("-m, --no-python and --run-path are set by this launcher: give torchrun's other options, then "
                    "train and its options")
        sys.exit(2)
    if args.training_script not in COMMANDS:
        print_error(f"give torchrun's options, then train and its options (the one command that runs on several "
                    f"processes); got {args.training_script!r} where the command goes")
        sys.exit(2)
    args.training_script_args = [args.training_script, *args.training_script_args]
    args.training_script, args.module = "vmd_cli", True
    try:
        run(args)
    except SignalException as e:  # the launcher got it and passed it on; each rank has said where it stopped
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        sys.exit(exit_code(e.failures))
    except Exception as e:  # noqa: BLE001 - the launcher's own failure (a rendezvous that timed out, ...): one line
        said = str(e).splitlines()[0] if str(e).strip() else "no message; LOGLEVEL=INFO shows its log"
        print_error(f"the launcher stopped: {type(e).__name__} ({said})"[:400])
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
