"""``vmd play``: the terminal playground (Textual), MDM and VMD side by side."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import typer

from vmd.models import NAMES_HELP
from vmd_cli.main import app, friendly

DEFAULT_PUZZLE_SEED = 7


def _model(source: Optional[str], bundled: str):
    """(model, its z policy, its board's title): the title says what the model is, whichever
    option named it, and where it came from when that is not the bundled default."""
    from vmd_cli.sudoku import load_sudoku_model

    model, cfg, _, _ = load_sudoku_model(source, "cpu", bundled)
    kind = "VMD" if model.has_latent else "MDM"
    return model, cfg.sample.z_policy, kind if source is None else f"{kind} {Path(source).name}"


def build_app(mdm: Optional[str] = None, vmd: Optional[str] = None, puzzle: Optional[str] = None,
              nfe: int = 10, strategy: str = "top-margin", seed: int = 0):
    """The app, ready to run (tests drive it with ``run_test``)."""
    from vmd.sudoku.grid import Puzzle, read_puzzles
    from vmd.sudoku.solver import make_puzzle
    from vmd_cli.play.app import PlayApp
    from vmd_cli.play.sudoku import Settings, SudokuScreen

    models = _model(mdm, "sudoku-mdm"), _model(vmd, "sudoku-vmd")
    puzzles = read_puzzles(puzzle) if puzzle else []
    first = puzzles[0] if puzzles else Puzzle(make_puzzle(random.Random(DEFAULT_PUZZLE_SEED), 30, 36)[0], None,
                                              "generated easy")
    settings = Settings(nfe=nfe, strategy=strategy, seed=seed, puzzles=puzzles)
    return PlayApp(lambda: SudokuScreen(models[0], models[1], settings, first))


@app.command(epilog="Examples:\n\n"
             "  vmd play\n\n"
             "  vmd play --puzzle puzzles.txt --nfe 5\n\n"
             "  vmd play --mdm runs/sudoku-mdm-tiny --vmd runs/sudoku-vmd-tiny\n\n"
             "Keys: space step, p play/pause, z new latent, ? help, q quit.")
@friendly
def play(
    mdm: Optional[str] = typer.Option(None, help=f"The left model: {NAMES_HELP} \\[default: sudoku-mdm]."),
    vmd: Optional[str] = typer.Option(None, help=f"The right model: {NAMES_HELP} \\[default: sudoku-vmd]. "
                                      "Each board is titled by what its model is."),
    puzzle: Optional[str] = typer.Option(None, help="Start from the puzzles of this file (f steps through them)."),
    nfe: int = typer.Option(10, help="Denoiser calls (steps). Steps with nothing left to reveal cost nothing (the "
                            "board stays), so NFE above the puzzle's blanks fills it as NFE = its blanks."),
    strategy: str = typer.Option("top-margin", help="random, top-prob or top-margin."),
    seed: int = typer.Option(0, help="Sampling seed (the latent draws of the VMD)."),
):
    """Watch an MDM and a VMD fill the same Sudoku step by step, side by side."""
    from vmd import config as C

    C.from_dict({"sample": {"nfe": nfe, "strategy": strategy}})
    build_app(mdm, vmd, puzzle, nfe, strategy, seed).run()
