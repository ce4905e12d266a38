"""What the task screens of ``vmd play`` (Sudoku, text) share: stepping and playing through a run's frames
at a chosen speed, the keys for that, and the line of keys under the boards. Written once so that both
screens step, play, stop and reset alike."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding

SPEEDS = (2.0, 1.0, 0.5, 0.25, 0.1)  # seconds per step
STEP_BINDINGS = [Binding("space", "step", "step"), Binding("p", "play", "play"), Binding("r", "reset", "reset")]
SPEED_BINDINGS = [Binding("plus,equals_sign", "speed(1)", "faster", key_display="+"),
                  Binding("minus", "speed(-1)", "slower", key_display="-")]


def key_hint(keys) -> Text:
    """Every key (``keys``: (key, what) pairs) on one or two lines, so that all show when the footer is too narrow."""
    return Text("  ").join(Text.assemble((key, "bold cyan"), " ", what) for key, what in keys)


class Playback:
    """Step, play / pause, reset and speed for a screen that shows one frame of its runs at a time.

    Mix in before ``Screen``. The screen provides ``ready()`` (its runs are computed), ``last()`` (the last frame
    it can show; asked only when ready), ``refresh_view()`` and ``settings.speed`` (an index into ``SPEEDS``).
    This keeps ``pos`` (the frame shown, 0 before the first step; the screen sets it back to 0 when it runs
    again), ``playing`` and the timer. Playing stops at the last frame; play pressed there starts from frame 0.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pos = 0
        self.playing = False
        self.timer = None

    def play_state(self) -> str:
        """The speed and whether it plays, for the screen's info line."""
        return f"{SPEEDS[self.settings.speed]:g}s/step · {'playing' if self.playing else 'paused'}"

    def action_step(self) -> None:
        if self.ready() and self.pos < self.last():
            self.pos += 1
            self.refresh_view()

    def action_play(self) -> None:
        self.playing = not self.playing
        if self.playing and self.ready() and self.pos >= self.last():
            self.pos = 0
        self._restart_timer()
        self.refresh_view()

    def _restart_timer(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        if self.playing:
            self.timer = self.set_interval(SPEEDS[self.settings.speed], self._tick)

    def _tick(self) -> None:
        if not self.ready():
            return  # still computing: wait, playing
        self.pos = min(self.pos + 1, self.last())
        if self.pos == self.last():  # the end: stop here
            self.playing = False
            self._restart_timer()
        self.refresh_view()

    def action_reset(self) -> None:
        self.pos = 0
        self.playing = False
        self._restart_timer()
        self.refresh_view()

    def action_speed(self, delta: int) -> None:
        self.settings.speed = max(0, min(len(SPEEDS) - 1, self.settings.speed + delta))
        self._restart_timer()
        self.refresh_view()
