import random

import pytest
import torch

import vmd.runtime.cache
from vmd.runtime.errors import DataError
from vmd.sudoku import data as D
from vmd.sudoku.augment import augment
from vmd.sudoku.grid import UNITS, is_solved
from vmd.sudoku.grid import solved_mask
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


def test_generated_sets_are_cached_and_say_what_they_make(tmp_path, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    calls = []
    p1, s1 = D.generated_set(6, 30, 36, seed=3, workers=1, progress=lambda *a: calls.append(a))
    (path,) = (tmp_path / "sudoku").glob("*.safetensors")
    assert "n6-givens30-36-seed3" in path.name
    assert calls[0] == (0, 6, f"generating 6 Sudoku puzzles (30-36 givens) -> {path}") and calls[-1][:2] == (6, 6)
    calls.clear()
    p2, s2 = D.generated_set(6, 30, 36, seed=3, workers=1, progress=lambda *a: calls.append(a))  # from the cache
    assert torch.equal(p1, p2) and torch.equal(s1, s2) and solved_mask(s1, p1).all()
    assert calls == [(6, 6, f"using cached 6 Sudoku puzzles (30-36 givens): {path}")]


def rewrite(path, puzzles, solutions, digest=None):
    """Replace a cached set's tensors, keeping its metadata; with its checksum too unless ``digest`` is given."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["sha256"] = digest or meta["sha256"]
    save_file({"puzzles": puzzles, "solutions": solutions}, str(path), metadata=meta)


def test_a_cache_with_wrong_contents_is_made_again(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    p, s = D.generated_set(6, 30, 36, seed=3, workers=1)
    (path,) = (tmp_path / "sudoku").glob("*.safetensors")
    ones = torch.ones_like(s)
    cases = [
        (lambda: rewrite(path, p, ones), "checksum mismatch"),  # right shape, every solution all 1s
        (lambda: rewrite(path, p, ones, vmd.runtime.cache.digest({"puzzles": p, "solutions": ones})), "not a valid grid"),  # even with a matching checksum
        (lambda: save_file({"puzzles": p, "solutions": s}, str(path)), "settings do not match"),  # no metadata
        (lambda: path.write_bytes(b"garbage"), "unreadable"),
    ]
    for spoil, reason in cases:
        spoil()
        labels = []
        p2, s2 = D.generated_set(6, 30, 36, seed=3, workers=1, progress=lambda d, t, label: labels.append(label))
        assert torch.equal(p2, p) and torch.equal(s2, s)
        assert labels[0].startswith("regenerating 6 Sudoku puzzles") and reason in labels[0], labels[0]
        assert torch.equal(D.generated_set(6, 30, 36, seed=3, workers=1)[1], s)  # and the file is whole again
    assert [f.name for f in (tmp_path / "sudoku").iterdir()] == [path.name]


def test_an_unusable_cache_directory_is_one_error_before_any_work(tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("generated before checking the cache directory")

    monkeypatch.setattr(D, "_generate", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VMD_CACHE_DIR", str(blocker))
    with pytest.raises(DataError, match=f"the data cache {blocker} is not a directory; set VMD_CACHE_DIR"):
        D.generated_set(6, 30, 36, workers=1)
    monkeypatch.setenv("VMD_CACHE_DIR", str(blocker / "below"))
    with pytest.raises(DataError, match="is not writable .*; set VMD_CACHE_DIR"):
        D.generated_set(6, 30, 36, workers=1)
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path / "cache"))

    def read_only(*a, **k):  # as a read-only directory answers (the tests may run as root, who may write anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(vmd.runtime.cache.tempfile, "TemporaryFile", read_only)
    with pytest.raises(DataError, match=r"cache/sudoku is not writable \(Permission denied\)"):
        D.generated_set(6, 30, 36, workers=1)


def test_a_failed_cache_write_is_a_data_error(tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(vmd.runtime.cache, "atomic_write", full)
    with pytest.raises(DataError, match="could not write the data cache .*No space left on device.*VMD_CACHE_DIR"):
        D.generated_set(6, 30, 36, workers=1)


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
