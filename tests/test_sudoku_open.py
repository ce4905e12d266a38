"""Open puzzles (vmd/sudoku/open.py): the solution counts claimed, checked by the solver; sets cached
and deterministic; files that vmd solve reads."""

import random

import pytest
import torch

from vmd.runtime.errors import DataError
from vmd.sudoku.grid import read_puzzles
from vmd.sudoku.open import OPEN_SETS, make_open_puzzle, open_set, write_puzzles
from vmd.sudoku.solver import count_solutions


@pytest.mark.parametrize("name", ["two", "few", "many"])
def test_the_puzzles_have_the_solution_counts_claimed(tmp_path, monkeypatch, name):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    lo, hi = OPEN_SETS[name]
    puzzles, counts = open_set(name, 3, seed=1)
    for grid, n in zip(puzzles.tolist(), counts.tolist()):
        true = count_solutions(grid, (hi or lo) + 1)  # recounted, one past the claim
        assert lo <= true and (hi is None or true <= hi) and (n == true or hi is None)
        assert sum(v > 0 for v in grid) <= 30  # few givens: a minimal puzzle and then some blanks
    again, _ = open_set(name, 3, seed=1)
    assert torch.equal(again, puzzles)  # cached (or made again): the same set
    assert not torch.equal(open_set(name, 3, seed=2)[0], puzzles)


def test_exactly_two_solutions_where_asked_and_empty_boards(tmp_path, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    grid, n = make_open_puzzle(random.Random(0), 2, 2)
    assert n == 2 and count_solutions(list(grid), 10) == 2
    empty, counts = open_set("empty", 4)
    assert not empty.any() and counts.tolist() == [0] * 4


def test_a_spoiled_cache_is_made_again_and_a_set_is_written_for_vmd_solve(tmp_path, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    puzzles, _ = open_set("two", 2, seed=0)
    (path,) = (tmp_path / "sudoku").glob("open-*.safetensors")
    path.write_bytes(b"garbage")
    labels = []
    again, _ = open_set("two", 2, seed=0, progress=lambda d, t, label: labels.append(label))
    assert torch.equal(again, puzzles) and "could not be used: unreadable" in labels[0]
    out = tmp_path / "two.txt"
    write_puzzles(puzzles, out)
    assert [p.grid for p in read_puzzles(out)] == [tuple(r) for r in puzzles.tolist()]
    with pytest.raises(DataError, match="unknown open set 'three'"):
        open_set("three", 2)
