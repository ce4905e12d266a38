"""A Sudoku board widget: one frame of a trace, drawn with rich styles."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from vmd.sudoku.grid import conflicts
from vmd.sudoku.solve import Trace

# the colour of a cell tells the step that filled it (cycling for long runs)
STEP_COLOURS = ("cyan", "green", "yellow", "magenta", "bright_blue", "bright_red", "bright_cyan", "bright_green")


def step_colour(step: int) -> str:
    return STEP_COLOURS[(step - 1) % len(STEP_COLOURS)]


def render_board(trace: Trace | None, step: int, roomy: bool = False) -> Text:
    """The grid after ``step`` steps: givens bold, filled cells coloured by their step, the cells
    filled in this very step reversed, cells that break a rule white on red. ``roomy`` draws
    wider cells (for a large terminal)."""
    pad = " " if roomy else ""
    cell_w = 1 + 2 * len(pad)
    rule = "┼".join("─" * (1 + 3 * (cell_w + 1)) for _ in range(3))  # a row: 3 x (" " + 3 cells and spaces), "│"
    text = Text()
    if trace is None:
        text.append("\n".join(" " * len(rule) for _ in range(11)))
        return text
    grid = trace.frames[min(step, trace.nfe)]
    bad = conflicts(grid)
    for r in range(9):
        if r in (3, 6):
            text.append(rule + "\n", style="dim")
        text.append(" ")
        for c in range(9):
            if c in (3, 6):
                text.append("│ ", style="dim")
            i = r * 9 + c
            v, when = grid[i], trace.filled_at[i]
            if not v:
                style = "dim"
            elif when == 0:
                style = "bold"
            elif i in bad:
                style = "bold white on red"
            else:
                style = step_colour(when) + (" reverse" if when == step else "")
            text.append(f"{pad}{v if v else '·'}{pad}", style=style)
            text.append(" ")
        if r < 8:
            text.append("\n")
    return text


def status_line(trace: Trace | None, step: int, solved: bool) -> str:
    if trace is None:
        return "working..."
    grid = trace.frames[min(step, trace.nfe)]
    left = sum(1 for v in grid if not v)
    if left:
        state = f"{left} left"
    else:
        state = "[green]solved[/]" if solved else "[red]invalid[/]"
    return f"step {min(step, trace.nfe)}/{trace.nfe} · {state}"


class Board(Static):
    """A board plus its status line; ``show(trace, step)`` redraws it."""

    DEFAULT_CSS = """
    Board { width: auto; height: auto; padding: 0 1; border: round $primary; }
    """

    def show(self, trace: Trace | None, step: int, roomy: bool = False) -> None:
        self.update(render_board(trace, step, roomy))
