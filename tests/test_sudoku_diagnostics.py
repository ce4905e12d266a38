"""Sudoku diagnostics: why solves fail (rules broken within a step or across steps), and solving
with z given the solution."""

import random

import torch

from vmd.checkpoint import load_model
from vmd.models import bundled_path
from vmd.sudoku.evaluate import accuracy_table, clash_kinds, failure_kinds, known_solution_accuracy, paired_difference
from vmd.sudoku.solve import solve
from vmd.sudoku.solver import make_puzzle
from vmd.tasks.sudoku import to_tokens

SOLUTION = [int(c) for c in "534678912672195348198342567859761423426853791713924856961537284287419635345286179"]


def test_clashes_are_sorted_by_the_steps_that_filled_the_cells():
    solved = torch.tensor([SOLUTION])
    broken = solved.clone()
    broken[0, 0] = SOLUTION[1]  # cell 0 repeats cell 1's digit: row 0, and that digit's cells in column 0 and box 0
    blank = torch.zeros(1, 81, dtype=torch.long)
    one_step = torch.ones(1, 81, dtype=torch.long)
    assert clash_kinds(solved, one_step, blank) == {"failed": 0, "same_step": 0, "across_steps": 0}
    assert clash_kinds(broken, one_step, blank) == {"failed": 1, "same_step": 1, "across_steps": 0}
    # the same grid, but cell 1 was a given: the clash is with a given, not within a step
    given = blank.clone()
    given[0, 1] = SOLUTION[1]
    with_given = one_step.clone()
    with_given[0, 1] = 0
    assert clash_kinds(broken, with_given, given) == {"failed": 1, "same_step": 0, "across_steps": 1}
    # or cell 0 was filled a step after everything else
    later = one_step.clone()
    later[0, 0] = 2
    assert clash_kinds(broken, later, blank) == {"failed": 1, "same_step": 0, "across_steps": 1}
    # an incomplete grid that breaks no rule fails, but as neither kind
    holes = solved.clone()
    holes[0, 5] = 0
    assert clash_kinds(holes, one_step, blank) == {"failed": 1, "same_step": 0, "across_steps": 0}


def test_failure_kinds_count_the_failures_that_solve_reports():
    rng = random.Random(3)
    puzzles = torch.tensor([make_puzzle(rng, 30, 36)[0] for _ in range(24)])
    model, cfg, _ = load_model(bundled_path("sudoku-mdm"))
    failed = {}
    for nfe in (1, 2):
        kinds = failure_kinds(model, puzzles, nfe=nfe, batch_size=16)
        failed[nfe] = int((~solve(model, puzzles, nfe=nfe, batch_size=16).solved).sum())
        assert kinds["failed"] == failed[nfe]
        assert kinds["same_step"] + kinds["across_steps"] == failed[nfe]  # every cell is filled: a failure breaks a rule
    assert failed[1] > 0  # at NFE 1 the bundled MDM fails about 40% of easy puzzles (docs/results-sudoku.md)
    # a VMD drawing z every step: the same draws, batch by batch, as solve's
    model = load_model(bundled_path("sudoku-vmd"))[0]
    for seed in (0, 1):
        kinds = failure_kinds(model, puzzles, nfe=1, batch_size=8, z_policy="step", strategy="random", seed=seed)
        result = solve(model, puzzles, nfe=1, batch_size=8, z_policy="step", strategy="random", seed=seed)
        assert kinds["failed"] == int((~result.solved).sum())


def test_known_solution_z_is_encoded_from_the_answer_and_the_current_mask():
    rng = random.Random(5)
    pairs = [make_puzzle(rng, 30, 36) for _ in range(4)]
    puzzles, solutions = torch.tensor([p for p, _ in pairs]), torch.tensor([s for _, s in pairs])
    model, _, _ = load_model(bundled_path("sudoku-vmd"))
    seen = []
    encode = model.encode

    def spy(x0, masked):
        seen.append((x0.clone(), masked.clone()))
        return encode(x0, masked)

    model.encode = spy
    share = known_solution_accuracy(model, puzzles, solutions, nfe=3, batch_size=4)
    assert 0.0 <= share <= 1.0
    assert len(seen) == 3  # once before each step
    for x0, _ in seen:
        assert torch.equal(x0, to_tokens(solutions))
    masks = [m for _, m in seen]
    assert torch.equal(masks[0], puzzles == 0)  # the blanks of the puzzle first, then fewer each step
    assert (masks[1] <= masks[0]).all() and masks[1].sum() < masks[0].sum()
    assert (masks[2] <= masks[1]).all() and masks[2].sum() < masks[1].sum()


def test_paired_difference_counts_the_discordant_puzzles_and_tests_them_exactly():
    a = torch.tensor([True] * 10 + [False] * 5 + [True] * 5)
    b = torch.tensor([False] * 10 + [False] * 5 + [True] * 5)
    out = paired_difference(a, b)
    assert (out["only_a"], out["only_b"]) == (10, 0)
    assert abs(out["p"] - 2 * 0.5 ** 10) < 1e-12  # 10 of 10 discordant one way
    assert paired_difference(b, a)["p"] == out["p"]
    assert paired_difference(a, a) == {"only_a": 0, "only_b": 0, "p": 1.0}
    balanced = paired_difference(torch.tensor([True, False] * 6), torch.tensor([False, True] * 6))
    assert balanced["p"] == 1.0  # 6 against 6: no evidence either way


def test_accuracy_table_keeps_each_puzzles_result_when_asked():
    model = load_model(bundled_path("sudoku-mdm"))[0]
    rng = random.Random(3)
    puzzles = torch.tensor([make_puzzle(rng, 30, 36)[0] for _ in range(6)], dtype=torch.uint8)
    table = accuracy_table(model, puzzles, nfes=(1, 10), strategies=("top-margin",), per_puzzle=True)
    for nfe in (1, 10):
        solved = table["solved"]["top-margin"][nfe]
        assert solved.shape == (6,) and abs(float(solved.double().mean()) - table["accuracy"]["top-margin"][nfe]) < 1e-12
        assert torch.equal(solved, solve(model, puzzles, nfe=nfe, batch_size=256).solved)
    assert "solved" not in accuracy_table(model, puzzles, nfes=(1,), strategies=("top-margin",))  # JSON-ready by default
