"""Rich progress bars: making training data, and training (step, loss, latent KL, steps/s, tokens/s, the
share of the device's matmul rate, time left)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vmd.train import Progress as TrainEvent


def _si(x: float) -> str:
    """12345 -> 12.3k: a rate short enough for the progress line."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


class TrainProgress:
    def __init__(self, console: Console, start: int, total: int):
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  kl {task.fields[kl]}  bpt {task.fields[bpt]}{task.fields[valid]}"),
            TextColumn("{task.fields[rate]} it/s{task.fields[speed]}"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        zero = {"loss": "-", "kl": "-", "bpt": "-", "rate": "-", "valid": "", "speed": ""}
        self.task = self.bar.add_task("train", total=total, completed=start, **zero)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def stop(self):
        self.bar.stop()

    def update(self, ev: TrainEvent) -> None:
        m = ev.metrics
        fields = {"loss": f"{m['loss']:.3f}", "kl": f"{m['latent_kl']:.3f}", "bpt": f"{m['bits_per_token']:.3f}",
                  "rate": f"{ev.steps_per_s:.1f}", "speed": f"  {_si(ev.tokens_per_s)} tok/s  "
                                                                     f"{100 * ev.matmul_share:.0f}% matmul"}
        if "valid_bpt" in ev.valid:  # kept until the next validation
            fields["valid"] = f"  valid {ev.valid['valid_bpt']:.3f}"
        self.bar.update(self.task, completed=ev.step, total=ev.total, **fields)


class DataProgress:
    """The adapter for a task's ``prepare(progress)``: ``update(done, total, label)``. Each new
    label (what is made and where it goes, or which cached file is used) is printed as a line; a
    bar follows only while there is work left, so a cached set shows its one line and no bar."""

    def __init__(self, console: Console):
        self.console, self.bar, self.task, self.label = console, None, None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, total: int, label: str | None = None) -> None:
        if label and label != self.label:
            self.label = label
            self.console.print(label, highlight=False, soft_wrap=True)
        if self.bar is None:
            if done >= total:
                return  # nothing to wait for
            self.bar = Progress(TextColumn("[bold]data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("data", total=total)
        self.bar.update(self.task, completed=done, total=total)


@contextmanager
def progress_bar(label: str, total: int, console: Console | None = None):
    """A transient bar on stderr: (bar, task) for ``bar.advance(task, k)``."""
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console or Console(stderr=True), transient=True) as bar:
        yield bar, bar.add_task(label, total=total)
