"""Sudoku commands: ``vmd solve`` (every puzzle of a file, by default with the bundled model) and the
Sudoku accuracy table of ``vmd eval``."""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.text import Text

from vmd.models import NAMES_HELP
from vmd_cli.common import app, load_any, parse_ints
from vmd_cli.console import err, fail, friendly, out
from vmd_cli.progress import progress_bar

FORMATS = ("grid", "line", "json")


def draw(puzzle, grid, bad: set[int]) -> Text:
    """A 9x9 grid with box borders: givens bold, filled cells cyan, broken rules red."""
    text = Text()
    for r in range(9):
        if r in (3, 6):
            text.append("------+-------+------\n", style="dim")
        for c in range(9):
            if c in (3, 6):
                text.append("| ", style="dim")
            i = r * 9 + c
            v = grid[i]
            style = "bold" if puzzle[i] else ("red" if i in bad else "cyan")
            text.append(str(v) if v else ".", style=style)
            text.append(" " if c < 8 else "\n")
    return text


def load_sudoku_model(model: Optional[str], device: Optional[str], bundled: str = "sudoku-vmd"):
    """A Sudoku model by any name (``load_any``), or the bundled one: (model on its device, config,
    step, device)."""
    source = model if model is not None else bundled
    net, cfg, step, dev = load_any(source, device)
    if cfg.task.name != "sudoku":
        fail(f"{source} is a {cfg.task.name} model, not a Sudoku model")
    return net, cfg, step, dev


@app.command(epilog="Examples:\n\n"
             "  vmd solve puzzles.txt\n\n"
             "  vmd solve puzzles.csv --nfe 5 --restarts 4 --format line\n\n"
             "  cat puzzle.sdk | vmd solve - --model runs/sudoku-vmd-tiny\n\n"
             "  vmd solve empty.txt --samples 100 --nfe 20 --format json\n\n"
             "Exit code: 0 when every puzzle is solved (with --samples: got at least one valid completion), 1 when "
             "some are not (the summary on stderr names them), 2 for bad input.")
@friendly
def solve(
    file: str = typer.Argument(..., help="Puzzle file: 81-character lines, 9x9 grids (with or without borders) or CSV; - for stdin."),
    nfe: int = typer.Option(10, help="Denoiser calls (steps) per puzzle. Steps with nothing left to reveal cost "
                            "nothing, so NFE above a puzzle's blanks solves it as NFE = its blanks."),
    strategy: Optional[str] = typer.Option(None, help="Which cells to fill first: random, top-prob, top-margin "
                                           "\\[default: the model's, top-margin for the solvers, random for the "
                                           "generators]."),
    temperature: Optional[float] = typer.Option(None, help="Value temperature, 0 for argmax \\[default: the model's, 0 "
                                                "for the solvers, 1 for the generators]. A generator samples at 1."),
    model: Optional[str] = typer.Option(None, help=f"The model: {NAMES_HELP} \\[default: sudoku-vmd]."),
    restarts: int = typer.Option(0, help="Retry each failed puzzle up to K times, with fresh z draws and a perturbed fill order."),
    fmt: str = typer.Option("grid", "--format", help="Output: grid (drawn); line (81 characters a puzzle: the solution, or "
                            "the puzzle as given, blanks as '.', when not solved); json (one object a line: puzzle, solved, "
                            "solution, null when not solved, and then the attempt)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    samples: Optional[int] = typer.Option(None, help="Open puzzles (several answers): N independent completions of "
                                          "each puzzle, each its own random stream and z; prints the distinct valid "
                                          "ones with how often each came (json: all of them)."),
    batch_size: Optional[int] = typer.Option(None, help="Puzzles per batch \\[default: 64 on a CPU, 256 on a GPU]. On a "
                                             "CPU, one batch per torch thread (OMP_NUM_THREADS) runs at a time."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps \\[default: the model's]."),
):
    """Solve every puzzle in FILE; failures are marked, a summary ends the output."""
    from vmd import config as C
    from vmd.sudoku.data import puzzles_to_tensors
    from vmd.sudoku.grid import conflicts, read_puzzles, to_json, to_line
    from vmd.sudoku.solve import solve as solve_puzzles

    if fmt not in FORMATS:
        fail(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if restarts < 0 or (batch_size is not None and batch_size < 1) or (samples is not None and samples < 1):
        fail("--restarts must be >= 0, --batch-size and --samples >= 1")
    if temperature is not None and not 0 <= temperature < float("inf"):
        fail(f"--temperature must be a number >= 0, got {temperature}")
    C.from_dict({"sample": {"nfe": nfe, **({"strategy": strategy} if strategy else {})},
                 **({"device": {"device": device}} if device else {})})
    puzzles = read_puzzles(file)
    net, cfg, _, dev = load_sudoku_model(model, device)
    strategy = strategy or cfg.sample.strategy
    temperature = cfg.sample.temperature if temperature is None else temperature
    grids, _ = puzzles_to_tensors(puzzles)
    options = dict(nfe=nfe, strategy=strategy, temperature=temperature, restarts=restarts, batch_size=batch_size,
                   seed=seed, z_policy=cfg.sample.z_policy, schedule=cfg.diffusion.schedule, device=dev)
    if samples is not None:
        return show_completions(net, puzzles, grids, samples, fmt, options)
    t0 = time.perf_counter()
    with progress_bar("solve", len(puzzles)) as (bar, task):
        result = solve_puzzles(net, grids, on_batch=lambda k: bar.advance(task, k), **options)
    seconds = time.perf_counter() - t0
    for p, g, ok in zip(puzzles, result.grids.tolist(), result.solved.tolist()):
        if fmt == "json":
            print(to_json(p, g, ok))
        elif fmt == "line":  # machine-clean: 81 characters; an unsolved puzzle comes back as given, blanks and all
            print(to_line(g if ok else p.grid))
        else:
            mark = "[green]solved[/]" if ok else "[bold red]NOT SOLVED[/]"
            out.print(f"{p.source}  {p.givens} givens  {mark}", highlight=False)
            out.print(draw(p.grid, g, set() if ok else conflicts(g)))
    solved = int(result.solved.sum())
    err.print(f"solved {solved}/{len(puzzles)} in {seconds:.2f} s ({len(puzzles) / max(seconds, 1e-9):.1f} puzzles/s), "
              f"NFE {nfe}, {strategy}" + (f", temperature {temperature:g}" if temperature else "")
              + (f", up to {restarts} restarts" if restarts else ""), highlight=False)
    if solved < len(puzzles):
        missed = [p.source for p, ok in zip(puzzles, result.solved.tolist()) if not ok]
        more = f" and {len(missed) - 10} more" if len(missed) > 10 else ""
        err.print(f"not solved: {', '.join(missed[:10])}{more}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def show_completions(net, puzzles, grids, samples: int, fmt: str, options: dict) -> None:
    """``vmd solve --samples N``: N completions a puzzle, the distinct valid ones shown with their counts."""
    import json

    from vmd.sudoku.grid import conflicts, to_line
    from vmd.sudoku.solve import sample_completions

    t0 = time.perf_counter()
    with progress_bar(f"{samples} samples a puzzle", len(puzzles) * samples) as (bar, task):
        found = sample_completions(net, grids, samples, on_batch=lambda k: bar.advance(task, k), **options)
    seconds = time.perf_counter() - t0
    for p, c in zip(puzzles, found):
        if fmt == "json":
            print(json.dumps({"puzzle": to_line(p.grid), "samples": c.samples, "valid": c.valid,
                              "distinct": [{"solution": to_line(g), "count": k} for g, k in c.distinct]}))
        elif fmt == "line":  # each distinct valid completion, or the puzzle as given when there is none
            for g, _ in c.distinct or [(p.grid, 0)]:
                print(to_line(g))
        else:
            mark = f"[green]{len(c.distinct)} distinct[/]" if c.distinct else "[bold red]NO VALID COMPLETION[/]"
            out.print(f"{p.source}  {p.givens} givens  {c.valid}/{c.samples} valid, {mark}", highlight=False)
            for g, k in c.distinct:
                out.print(f"x{k}", highlight=False)
                out.print(draw(p.grid, g, set()))
            if not c.distinct:
                out.print(draw(p.grid, c.first, conflicts(c.first)))
    some = sum(bool(c.distinct) for c in found)
    valid = sum(c.valid for c in found)
    distinct = sum(len(c.distinct) for c in found)
    err.print(f"{some}/{len(puzzles)} puzzles got at least one valid completion; {valid}/{len(puzzles) * samples} "
              f"samples valid, {distinct} distinct, in {seconds:.2f} s; NFE {options['nfe']}, {options['strategy']}, "
              f"temperature {options['temperature']:g}",
              highlight=False, soft_wrap=True)
    if some < len(puzzles):
        missed = [p.source for p, c in zip(puzzles, found) if not c.distinct]
        more = f" and {len(missed) - 10} more" if len(missed) > 10 else ""
        err.print(f"no valid completion: {', '.join(missed[:10])}{more}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def eval_sudoku(model, cfg, step, dev, run_dir, *, nfe, strategy, data, givens, restarts, samples, seed, z_policy,
                as_json):
    """The accuracy table of ``vmd eval`` for a Sudoku model."""
    import json

    from rich.table import Table

    from vmd.sampling import STRATEGIES
    from vmd.sudoku.data import generated_set, puzzles_to_tensors
    from vmd.sudoku.evaluate import DEFAULT_NFES, accuracy_table
    from vmd.sudoku.grid import read_puzzles

    nfes = parse_ints(nfe, "--nfe") or list(DEFAULT_NFES)
    strategies = [s.strip() for s in strategy.split(",")] if strategy else list(STRATEGIES)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        fail(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if data:
        puzzles, solutions = puzzles_to_tensors(read_puzzles(data))
        if samples:
            puzzles = puzzles[:samples]
            solutions = solutions[:samples] if solutions is not None else None
        source = data
    else:
        try:
            lo, hi = (int(v) for v in givens.split("-"))
        except ValueError:
            fail(f"--givens takes a range LO-HI such as 30-36, got {givens!r}")
        if not 17 <= lo <= hi <= 80:
            fail(f"--givens must satisfy 17 <= LO <= HI <= 80, got {givens}")
        n = samples or 500
        with progress_bar("test set", n) as (bar, task):
            puzzles, solutions = generated_set(n, lo, hi, seed=1000 + (seed or 0),
                                               progress=lambda done, total, label: bar.update(task, completed=done))
        source = f"generated, {lo}-{hi} givens"
    runs = len(nfes) * len(strategies) * puzzles.shape[0]
    with progress_bar("eval", runs) as (bar, task):
        table = accuracy_table(model, puzzles, nfes=nfes, strategies=strategies, restarts=restarts, seed=seed or 0,
                               z_policy=z_policy, schedule=cfg.diffusion.schedule, device=dev,
                               on_batch=lambda k: bar.advance(task, k))
    latent = {}
    if model.has_latent and solutions is not None:  # the latent's state on the solutions, under random masks
        from vmd.evaluate import latent_stats
        from vmd.tasks.sudoku import to_tokens

        latent = latent_stats(model, to_tokens(solutions[:1024]), None, cfg, seed=seed or 0, device=dev)
    if as_json:
        print(json.dumps({"method": cfg.method, "step": step, "puzzles": int(puzzles.shape[0]), "source": source,
                          "restarts": restarts, **table, **latent}))
        return
    view = Table(title=f"{cfg.method.upper()} sudoku, step {step}: % solved ({puzzles.shape[0]} puzzles, {source})",
                 caption=str(run_dir))
    view.add_column("strategy")
    for k in nfes:
        view.add_column(f"NFE {k}", justify="right")
    for s_name in strategies:
        view.add_row(s_name, *(f"{100 * table['accuracy'][s_name][k]:.1f}" for k in nfes))
    out.print(view)
    if latent:
        out.print(f"latent: KL {latent['latent_kl']:.3f} nats, {latent['active_dims']}/{latent['latent_dim']} active "
                  f"dimensions, z gain {latent['z_gain']:.3f} nats per masked cell (posterior z over a prior draw)")

