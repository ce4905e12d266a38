"""``vmd play``: the terminal playground (Textual), MDM and VMD side by side."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import typer

from vmd.models import NAMES_HELP
from vmd_cli.common import LENGTH_HELP, STEPS_PER_BLOCK_HELP, app
from vmd_cli.console import fail, friendly

DEFAULT_PUZZLE_SEED = 7


def _model(source: Optional[str], bundled: str):
    """(model, its z policy, its board's title, its sample settings): the title says what the model
    is, whichever option named it, and where it came from when that is not the bundled default."""
    from vmd_cli.sudoku import load_sudoku_model

    model, cfg, _, _ = load_sudoku_model(source, "cpu", bundled)
    kind = cfg.method.upper()
    return model, cfg.sample.z_policy, kind if source is None else f"{kind} {Path(source).name}", cfg.sample


def build_app(mdm: Optional[str] = None, vmd: Optional[str] = None, puzzle: Optional[str] = None,
              nfe: int = 10, strategy: Optional[str] = None, seed: int = 0, *, text: bool = False,
              bd3: Optional[str] = None, prompt: str = "", steps_per_block: Optional[int] = None,
              length: Optional[int] = None):
    """The app, ready to run (tests drive it with ``run_test``): Sudoku, or with ``text`` the text screen."""
    if text:
        from vmd_cli.play.text import build_text_app

        return build_text_app(bd3, vmd, prompt, steps_per_block, length, seed, strategy)
    from vmd.sudoku.grid import Puzzle, read_puzzles
    from vmd.sudoku.solver import make_puzzle
    from vmd_cli.play.app import PlayApp
    from vmd_cli.play.sudoku import Settings, SudokuScreen

    models = _model(mdm, "sudoku-mdm"), _model(vmd, "sudoku-vmd")
    strategy = strategy or models[1][3].strategy  # the VMD's own: top-margin for the solvers, random for generators
    puzzles = read_puzzles(puzzle) if puzzle else []
    first = puzzles[0] if puzzles else Puzzle(make_puzzle(random.Random(DEFAULT_PUZZLE_SEED), 30, 36)[0], None,
                                              "generated easy")
    settings = Settings(nfe=nfe, strategy=strategy, seed=seed, puzzles=puzzles)
    return PlayApp(lambda: SudokuScreen(models[0], models[1], settings, first))


@app.command(epilog="Examples:\n\n"
             "  vmd play\n\n"
             "  vmd play --puzzle puzzles.txt --nfe 5\n\n"
             "  vmd play --mdm runs/sudoku-mdm-tiny --vmd runs/sudoku-vmd-tiny\n\n"
             "  vmd play --text --prompt 'ROMEO:' --steps-per-block 2\n\n"
             "  vmd play --text --bd3 runs/shakespeare-bd3-block4 --vmd runs/shakespeare-block4 --seed 3\n\n"
             "Keys: space step, p play/pause, z new latent, ] [ more/fewer steps, ? help, q quit "
             "(text: e edits the prompt).")
@friendly
def play(
    text: bool = typer.Option(False, "--text", help="Text instead of Sudoku: BD3 left, block VMD right, filling the "
                              "same blocks after the same prompt."),
    mdm: Optional[str] = typer.Option(None, help=f"Sudoku: the left model: {NAMES_HELP} \\[default: sudoku-mdm]."),
    vmd: Optional[str] = typer.Option(None, help=f"The right model: {NAMES_HELP} \\[default: sudoku-vmd; text: "
                                      "shakespeare-block4-k1, the few-step block VMD, at one step per block]. Each side is titled by what its model "
                                      "is."),
    bd3: Optional[str] = typer.Option(None, help="Text: the left model \\[default: shakespeare-bd3-block4]; it must "
                                      "share the right one's vocabulary."),
    puzzle: Optional[str] = typer.Option(None, help="Sudoku: start from the puzzles of this file (f steps through "
                                         "them)."),
    nfe: Optional[int] = typer.Option(None, help="Sudoku: denoiser calls (steps) \\[default: 10]. Steps with nothing "
                                      "left to reveal cost nothing (the board stays), so NFE above the puzzle's blanks "
                                      "fills it as NFE = its blanks."),
    prompt: Optional[str] = typer.Option(None, help="Text: the text to continue (editable in the app) "
                                         "\\[default: none]."),
    steps_per_block: Optional[int] = typer.Option(None, "--steps-per-block", "-k", help=STEPS_PER_BLOCK_HELP),
    length: Optional[int] = typer.Option(None, help=LENGTH_HELP),
    strategy: Optional[str] = typer.Option(None, help="random, top-prob or top-margin \\[default: the VMD model's: "
                                           "top-margin for the Sudoku solvers, random for the generators]."),
    seed: int = typer.Option(0, help="Sampling seed (the latent draws of the VMD; text: both sides' draws)."),
):
    """Watch an MDM and a VMD fill the same Sudoku step by step, side by side (--text: a BD3 and a block VMD
    continue the same prompt, block by block)."""
    from vmd import config as C

    wrong = ({"--mdm": mdm, "--puzzle": puzzle, "--nfe": nfe} if text else
             {"--bd3": bd3, "--prompt": prompt, "--steps-per-block": steps_per_block, "--length": length})
    given = [k for k, v in wrong.items() if v is not None]
    if given:
        fail(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} "
             f"{'to Sudoku, not with --text' if text else 'with --text'}")
    C.from_dict({"sample": {"nfe": nfe or 10, **({"strategy": strategy} if strategy else {})}})
    build_app(mdm, vmd, puzzle, nfe or 10, strategy, seed, text=text, bd3=bd3, prompt=prompt or "",
              steps_per_block=steps_per_block, length=length).run()
