"""The Sudoku screen of ``vmd play``: MDM left, VMD right, the same puzzle, NFE, strategy and seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from vmd.sampling import STRATEGIES
from vmd.sudoku.grid import Puzzle, is_solved
from vmd.sudoku.solve import Trace, trace
from vmd.sudoku.open import OPEN_SETS, make_open_puzzle
from vmd.sudoku.solver import make_puzzle
from vmd_cli.play.board import Board, status_line
from vmd_cli.play.playback import SPEED_BINDINGS, STEP_BINDINGS, Playback, key_hint

NFES = (1, 2, 3, 5, 10, 20, 50)
LEVELS = {"easy": (30, 36), "hard": (22, 26)}
INTRO = ("MDM left, VMD right: the same puzzle, NFE, strategy and seed. A cell's colour is the step "
         "that filled it; this step's cells are reversed; givens are bold; red breaks a rule.")
KEYS = (
    ("space", "one step"), ("p", "play / pause"), ("r", "back to step 0"), ("+ / -", "faster / slower"),
    ("] / [", "more / fewer steps (NFE 1, 2, 3, 5, 10, 20, 50)"), ("s", "next strategy"),
    ("z", "new latent z for the VMD, run again from the start"), ("g / h", "new puzzle, easy / hard"),
    ("o / b", "an open puzzle (10-100 solutions) / a blank board: each z draw may find another grid"),
    ("f", "next puzzle from the --puzzle file"), ("e", "enter or paste a puzzle"), ("?", "this help"),
    ("q", "quit"),
)
KEYS_SHORT = (("space", "step"), ("p", "play"), ("r", "reset"), ("z", "new z"), ("] [", "NFE"), ("s", "strategy"),
              ("+ -", "speed"), ("g h", "easy/hard"), ("o b", "open/blank"), ("f", "file"), ("e", "enter"), ("?", "help"),
              ("q", "quit"))


@dataclass
class Side:
    """One board's model and its current run."""

    name: str
    model: object
    z_policy: str
    temperature: float = 0.0  # the model's own: 0 for the solvers, 1 for the generators
    trace: Trace | None = None
    draws: int = 0  # how many times z was drawn anew (the VMD side's seed offset)
    solved: bool = False
    found: set = field(default_factory=set)  # the distinct valid grids this side has made of the current puzzle


@dataclass
class Settings:
    nfe: int = 10
    strategy: str = "top-margin"
    seed: int = 0
    speed: int = 2  # index into playback.SPEEDS
    puzzles: list[Puzzle] = field(default_factory=list)  # from --puzzle FILE
    next_in_file: int = 0


class SudokuScreen(Playback, Screen):
    """The Sudoku task: ``pos`` (Playback's frame shown) is the step, 0 to the NFE."""

    PLAY_HELP = (INTRO, KEYS)  # for the help screen (app.py)
    BINDINGS = [  # all in the footer (it scrolls sideways when narrow) and on the help screen
        *STEP_BINDINGS,
        Binding("z", "new_z", "new z"),
        Binding("right_square_bracket", "nfe(1)", "NFE+"),
        Binding("left_square_bracket", "nfe(-1)", "NFE-"),
        Binding("s", "strategy", "strategy"),
        *SPEED_BINDINGS,
        Binding("g", "generate('easy')", "easy"),
        Binding("h", "generate('hard')", "hard"),
        Binding("o", "generate('open')", "open"),
        Binding("b", "generate('blank')", "blank"),
        Binding("f", "next_from_file", "file"),
        Binding("e", "enter", "enter"),
        Binding("question_mark", "app.help", "help", key_display="?"),
        Binding("q", "app.quit", "quit"),
    ]
    DEFAULT_CSS = """
    SudokuScreen { align: center top; }
    #boards { height: auto; width: auto; }
    .side { width: auto; height: auto; margin: 0 1; }
    .side > .status { width: auto; }
    .title { width: 100%; text-style: bold; content-align: center middle; }
    .status { width: 100%; }
    #info { width: 100%; height: auto; padding: 0 1; color: $text-muted; }
    #keys { width: 100%; height: auto; padding: 1 1 0 1; }
    """

    def __init__(self, mdm, vmd, settings: Settings, puzzle: Puzzle):
        """``mdm`` and ``vmd``: (model, z policy, board title) for the left and right boards."""
        super().__init__()
        self.sides = {key: Side(m[2], m[0], m[1], m[3].temperature) for key, m in (("mdm", mdm), ("vmd", vmd))}
        self.settings = settings
        self.puzzle = puzzle
        self.rng = random.Random(settings.seed)

    def compose(self) -> ComposeResult:
        with Horizontal(id="boards"):
            for key, side in self.sides.items():
                with Vertical(classes="side"):
                    yield Label(side.name, classes="title", id=f"title-{key}")
                    yield Board(id=f"board-{key}")
                    yield Static("", classes="status", id=f"status-{key}")
        yield Static("", id="info")
        yield Static(key_hint(KEYS_SHORT), id="keys")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.recompute()

    # --- sampling, off the UI thread ------------------------------------------------------
    def recompute(self, which=("mdm", "vmd")) -> None:
        self.pos = 0
        for key in which:
            self.sides[key].trace = None
        self.refresh_view()
        self.run_models(tuple(which), self.puzzle.grid, self.settings.nfe, self.settings.strategy)

    @work(thread=True, exclusive=True, group="sample")
    def run_models(self, which, grid, nfe, strategy) -> None:
        out = {}
        for key in which:
            side = self.sides[key]
            seed = self.settings.seed + 1000 * side.draws
            out[key] = trace(side.model, grid, nfe=nfe, strategy=strategy, seed=seed, z_policy=side.z_policy,
                             temperature=side.temperature)
        self.app.call_from_thread(self.show_traces, out, grid, nfe, strategy)

    def show_traces(self, traces, grid, nfe, strategy) -> None:
        if (grid, nfe, strategy) != (self.puzzle.grid, self.settings.nfe, self.settings.strategy):
            return  # settings moved on while this ran; a newer run is coming
        for key, tr in traces.items():
            side = self.sides[key]
            side.trace = tr
            side.solved = is_solved(tr.frames[-1], grid)
            if side.solved:
                side.found.add(tuple(tr.frames[-1]))
        self.refresh_view()

    # --- drawing --------------------------------------------------------------------------
    def on_resize(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        roomy = self.app.size.width >= 100 and self.app.size.height >= 30
        for key, side in self.sides.items():
            self.query_one(f"#board-{key}", Board).show(side.trace, self.pos, roomy)
            found = len(side.found)
            counter = f" · {found} valid grid{'s' if found != 1 else ''}" if found else ""
            self.query_one(f"#status-{key}", Static).update(status_line(side.trace, self.pos, side.solved) + counter)
            title = side.name if key == "mdm" else f"{side.name} · z draw {side.draws + 1}"
            self.query_one(f"#title-{key}", Label).update(title)
        s = self.settings
        self.query_one("#info", Static).update(
            f"{self.puzzle.source} ({self.puzzle.givens} givens) · NFE {s.nfe} · {s.strategy} · seed {s.seed} · "
            f"{self.play_state()}")

    # --- what Playback asks for -------------------------------------------------------------
    def ready(self) -> bool:
        return all(side.trace is not None for side in self.sides.values())

    def last(self) -> int:
        return self.settings.nfe

    @property
    def step(self) -> int:
        """The step shown (Playback's ``pos``)."""
        return self.pos

    # --- actions ----------------------------------------------------------------------------
    def action_nfe(self, delta: int) -> None:
        i = max(j for j, v in enumerate(NFES) if v <= self.settings.nfe)  # --nfe 7 steps from 5
        self.settings.nfe = NFES[max(0, min(len(NFES) - 1, i + delta))]
        self.recompute()

    def action_strategy(self) -> None:
        self.settings.strategy = STRATEGIES[(STRATEGIES.index(self.settings.strategy) + 1) % len(STRATEGIES)]
        self.recompute()

    def action_new_z(self) -> None:
        vmd = self.sides["vmd"]
        if not vmd.model.random_latent:
            self.notify("The right-hand model draws no latent z to redraw.", severity="warning")
            return
        vmd.draws += 1
        self.recompute(("vmd",))  # both boards restart at step 0; the MDM's run does not change, so it is kept

    def set_puzzle(self, puzzle: Puzzle) -> None:
        self.puzzle = puzzle
        for side in self.sides.values():
            side.found = set()  # a new puzzle: nothing found yet
        self.recompute()

    def action_generate(self, level: str) -> None:
        self.generate_puzzle(level, self.rng.randrange(2**31))

    @work(thread=True, exclusive=True, group="puzzle")
    def generate_puzzle(self, level: str, seed: int) -> None:
        if level == "blank":
            grid, name = (0,) * 81, "a blank board"
        elif level == "open":
            grid, count = make_open_puzzle(random.Random(seed), *OPEN_SETS["few"])
            name = f"generated open ({count} solutions)"
        else:
            grid, name = make_puzzle(random.Random(seed), *LEVELS[level])[0], f"generated {level}"
        self.app.call_from_thread(self.set_puzzle, Puzzle(grid, None, name))

    def action_next_from_file(self) -> None:
        s = self.settings
        if not s.puzzles:
            self.notify("No puzzle file: start with --puzzle FILE, or press e to enter a puzzle.")
            return
        s.next_in_file = (s.next_in_file + 1) % len(s.puzzles)
        self.set_puzzle(s.puzzles[s.next_in_file])

    def action_enter(self) -> None:
        from vmd_cli.play.app import PuzzleInput

        def done(puzzle: Puzzle | None) -> None:
            if puzzle is not None:
                self.set_puzzle(puzzle)

        self.app.push_screen(PuzzleInput(), done)
