"""vmd solve --samples N: independent completions of open puzzles (each its own stream), the distinct
valid ones counted, exit codes and summaries; bad values are one line."""

import json
import random
import subprocess
import sys

import torch

from vmd.models import resolve
from vmd.sudoku.solve import sample_completions
from vmd.sudoku.open import make_open_puzzle
from vmd.sudoku.solver import count_solutions

EMPTY = "." * 81
# no direct conflict, yet no solution: row 1 needs a 1 in its first cell, and column 1 holds one
STUCK = ".23456789" + "1" + "." * 71


def vmd(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "vmd_cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def test_two_equal_puzzles_draw_differently_and_a_seed_repeats_itself():
    from vmd.checkpoint import load_model

    model = load_model(resolve("sudoku-vmd"))[0].eval()
    grids = torch.zeros(2, 81, dtype=torch.uint8)
    kw = dict(nfe=2, strategy="random", temperature=1.0, batch_size=4)
    a = sample_completions(model, grids, 3, seed=5, **kw)
    b = sample_completions(model, grids, 3, seed=5, **kw)
    assert [c.first for c in a] == [c.first for c in b]  # the same seed, the same draws
    assert a[0].first != a[1].first  # two equal lines: two streams
    assert all(c.samples == 3 and 0 <= c.valid <= 3 for c in a)


def test_samples_of_a_two_solution_puzzle_are_counted_and_each_is_a_solution(tmp_path):
    grid, count = make_open_puzzle(random.Random(0), 2, 2)
    assert count == 2 and count_solutions(list(grid), 10) == 2
    path = tmp_path / "two.txt"
    line = "".join(str(v) if v else "." for v in grid)
    path.write_text(f"{line}\n{line}\n")
    r = vmd("solve", path, "--samples", "3", "--nfe", "81", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 2 and all(row["puzzle"] == line and row["samples"] == 3 for row in rows)
    for row in rows:
        assert sum(d["count"] for d in row["distinct"]) == row["valid"] >= 1
        for d in row["distinct"]:
            cells = [int(ch) for ch in d["solution"]]
            assert count_solutions(cells, 2) == 1 and all(g in (0, v) for g, v in zip(grid, cells))
    assert "2/2 puzzles got at least one valid completion" in r.stderr


def test_a_puzzle_without_a_completion_is_marked_and_bad_samples_are_one_line(tmp_path):
    path = tmp_path / "stuck.txt"
    path.write_text(STUCK + "\n" + EMPTY + "\n")
    r = vmd("solve", path, "--samples", "2", "--nfe", "2", "--format", "line")
    assert r.returncode == 1 and "got at least one valid completion" in r.stderr
    assert "no valid completion:" in r.stderr and "stuck.txt:1" in r.stderr
    assert r.stdout.splitlines()[0] == STUCK  # given back as it was
    bad = vmd("solve", path, "--samples", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--samples >= 1" in bad.stderr
    bad = vmd("solve", path, "--temperature", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--temperature must be" in bad.stderr


def test_temperature_and_order_default_to_the_models_and_make_a_solver_a_sampler(tmp_path):
    """The bundled solver fills by margin at temperature 0 unless told; at temperature 1 in random
    order, eight samples of an empty board are eight different valid grids."""
    path = tmp_path / "empty.txt"
    path.write_text(EMPTY + "\n")
    r = vmd("solve", path, "--samples", "8", "--nfe", "81", "--format", "line")
    assert r.returncode == 0 and "top-margin, temperature 0" in r.stderr, r.stderr
    r = vmd("solve", path, "--samples", "8", "--nfe", "81", "--format", "line", "--temperature", "1",
            "--strategy", "random")
    assert r.returncode == 0 and "random, temperature 1" in r.stderr, r.stderr
    grids = r.stdout.split()
    assert len(grids) >= 7 and all(count_solutions([int(c) for c in g], 2) == 1 for g in grids)
