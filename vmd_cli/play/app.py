"""``vmd play``: a Textual app with one screen per task (Sudoku, text) and shared modal screens
(help, puzzle entry)."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from rich.table import Table
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from vmd.runtime.errors import DataError
from vmd.sudoku.grid import Puzzle, parse

class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%;
                                  border: round $primary; background: $surface; padding: 0 1; }
    """

    def __init__(self, intro: str, keys):
        """A task screen's help: its ``PLAY_HELP`` (intro, (key, what) pairs)."""
        super().__init__()
        self.intro, self.keys = intro, keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in self.keys:
            table.add_row(key, what)
        with VerticalScroll():
            yield Static(self.intro + "\n")
            yield Static(table)
            yield Static("\n[dim]escape closes[/]")


class PuzzleInput(ModalScreen[Puzzle | None]):
    """One line in; a parsed puzzle out, or an error shown under the field (never a crash)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    PuzzleInput { align: center middle; }
    PuzzleInput > Vertical { width: 90; max-width: 95%; height: auto; border: round $primary; background: $surface;
                             padding: 0 1; }
    #error { color: $error; height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Puzzle: 81 characters, digits and . or 0 for blanks (enter to solve, escape to cancel)")
            yield Input(placeholder="53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79",
                        id="puzzle")
            yield Label("", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            puzzles = parse(event.value, "entered")
        except DataError as e:
            self.query_one("#error", Label).update(str(e))
            return
        if len(puzzles) != 1:
            self.query_one("#error", Label).update("enter exactly one puzzle")
            return
        self.dismiss(puzzles[0])

    def action_cancel(self) -> None:
        self.dismiss(None)


class PlayApp(App):
    """Hosts one task screen (Sudoku or text)."""

    TITLE = "vmd play"
    ENABLE_COMMAND_PALETTE = False  # the footer needs the room; every action has its own key

    def __init__(self, screen_factory):
        super().__init__()
        self.screen_factory = screen_factory

    def on_mount(self) -> None:
        self.push_screen(self.screen_factory())

    def action_help(self) -> None:
        self.push_screen(HelpScreen(*self.screen.PLAY_HELP))
