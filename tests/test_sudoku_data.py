import random

import pytest
import torch

from vmd.errors import DataError
from vmd.sudoku import data as D
from vmd.sudoku.augment import augment
from vmd.sudoku.grid import UNITS, is_solved
from vmd.sudoku.solve import solved_mask
from vmd.sudoku.solver import count_solutions, make_puzzle, random_solution, solutions

HARD = "4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......"


def grid_of(s):
    return [0 if ch == "." else int(ch) for ch in s]


def test_solver_solves_a_17_given_puzzle_and_counts_solutions():
    (sol,) = solutions(grid_of(HARD), limit=2)
    assert is_solved(sol, grid_of(HARD))
    assert count_solutions([0] * 81, limit=2) == 2  # the empty grid has many
    assert count_solutions(grid_of("55" + HARD[2:])) == 0


@pytest.mark.parametrize("lo, hi", [(30, 36), (22, 26)])
def test_generated_puzzles_have_one_solution_in_the_givens_range(lo, hi):
    rng = random.Random(lo)
    for _ in range(5):
        puzzle, solution = make_puzzle(rng, lo, hi)
        assert lo <= sum(1 for v in puzzle if v) <= hi
        assert solutions(list(puzzle), limit=2) == [solution]


def test_random_solutions_are_valid_and_differ():
    rng = random.Random(0)
    a, b = random_solution(rng), random_solution(rng)
    assert is_solved(a, [0] * 81) and is_solved(b, [0] * 81) and a != b


def test_augmentation_keeps_grids_valid_and_puzzles_matched_to_solutions():
    rng = random.Random(1)
    pairs = [make_puzzle(rng, 30, 36) for _ in range(4)]
    p = torch.tensor([a for a, _ in pairs] * 50)
    s = torch.tensor([b for _, b in pairs] * 50)
    ap, as_ = augment(p, s, generator=torch.Generator().manual_seed(0))
    assert solved_mask(as_, ap).all()  # each augmented solution solves its augmented puzzle
    assert torch.equal((ap > 0).sum(1), (p > 0).sum(1))  # the number of givens is kept
    assert len({tuple(r) for r in as_.tolist()}) > 150  # and the symmetries vary
    assert all(count_solutions(r, 2) == 1 for r in ap[:8].tolist())


def test_batched_checker_agrees_with_the_plain_one():
    rng = random.Random(2)
    s = torch.tensor([random_solution(rng) for _ in range(3)])
    bad = s.clone()
    bad[1, [0, 1]] = bad[1, [1, 0]]
    bad[2, 5] = 0
    assert solved_mask(bad, torch.zeros_like(bad)).tolist() == [True, False, False]
    assert [is_solved(g, [0] * 81) for g in bad.tolist()] == [True, False, False]
    assert len(UNITS) == 27


def test_generated_sets_are_cached_and_a_corrupt_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    p1, s1 = D.generated_set(6, 30, 36, seed=3, workers=1)
    files = list((tmp_path / "sudoku").glob("*.safetensors"))
    assert len(files) == 1 and "n6-givens30-36-seed3" in files[0].name
    p2, s2 = D.generated_set(6, 30, 36, seed=3, workers=1)  # from the cache
    assert torch.equal(p1, p2) and torch.equal(s1, s2) and solved_mask(s1, p1).all()
    files[0].write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt data cache .*delete the file"):
        D.generated_set(6, 30, 36, seed=3, workers=1)


def test_a_training_file_needs_solutions(tmp_path):
    rng = random.Random(4)
    pairs = [make_puzzle(rng, 30, 36) for _ in range(3)]
    f = tmp_path / "train.csv"
    f.write_text("quizzes,solutions\n" + "".join(f"{''.join(map(str, p))},{''.join(map(str, s))}\n" for p, s in pairs))
    grids, sols = D.training_file(str(f))
    assert grids.shape == (3, 81) and solved_mask(sols, grids).all()
    g = tmp_path / "nosol.txt"
    g.write_text("".join("".join(map(str, p)) + "\n" for p, _ in pairs))
    with pytest.raises(DataError, match="nosol.txt:1: a training file needs a solution"):
        D.training_file(str(g))
