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


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def metric_fields(ev: TrainEvent, latent: bool) -> list[str]:
    """What a log line shows: the bound in bits per token (and the loss, where it differs from the
    bound: a KL weight warming up, free bits), the latent's KL (models with one), validation."""
    m = ev.metrics
    out = [f"bpt {m['bits_per_token']:.3f}"]
    if m["nelbo"] and abs(m["loss"] - m["nelbo"]) > 1e-6 * abs(m["nelbo"]):
        out.append(f"loss {m['bits_per_token'] * m['loss'] / m['nelbo']:.3f}")
    if latent:
        out.append(f"kl {m['latent_kl']:.3f}")
    if "valid_bpt" in ev.valid:
        out.append(f"valid {ev.valid['valid_bpt']:.3f}")
    return out


class TrainProgress:
    """Training progress on ``console``. A terminal gets a bar that moves every step (``step``), its
    time left estimated from the first steps, with the last logged metrics; anything else (a log file,
    a job's output) gets one full plain line per logged window (``update``): step/total, the metrics,
    tokens/s, matmul share, elapsed and time left, never cut to the width of a terminal."""

    def __init__(self, console: Console, start: int, total: int, latent: bool = False):
        self.console, self.latent, self.live = console, latent, console.is_terminal
        self.start, self.t0 = start, None
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
            TimeRemainingColumn(), console=console, transient=False,
        ) if self.live else None
        if self.bar is not None:
            self.task = self.bar.add_task("train", total=total, completed=start, metrics="")

    def __enter__(self):
        import time

        self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            return self.bar.__exit__(*exc)
        return None

    def stop(self):
        if self.bar is not None:
            self.bar.stop()

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def update(self, ev: TrainEvent) -> None:
        fields = metric_fields(ev, self.latent)
        speed = f"{ev.steps_per_s:.2f} it/s  {_si(ev.tokens_per_s)} tok/s  {100 * ev.matmul_share:.0f}% matmul"
        if self.bar is not None:
            self.bar.update(self.task, completed=ev.step, total=ev.total, metrics="  ".join(fields + [speed]))
            return
        import time

        wall = time.perf_counter() - self.t0
        done = ev.step - self.start
        left = wall / done * (ev.total - ev.step) if done > 0 else float("nan")
        self.console.print(f"step {ev.step}/{ev.total}  " + "  ".join(fields) + f"  {speed}  elapsed {_clock(ev.elapsed_s)}"
                           f"  left {_clock(left) if left == left else '-'}", highlight=False, soft_wrap=True)


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
