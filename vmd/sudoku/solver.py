"""An exact Sudoku solver on bitmasks, and the puzzle generator built on it.

Candidates are 9-bit masks. The search propagates naked singles (a cell with one candidate)
and hidden singles (a digit with one place in a unit), then branches on the cell with the
fewest candidates. ``count_solutions(grid, limit=2)`` is the uniqueness test the generator
calls after each removal.

The generator fills a random complete grid, then removes givens in random order while the
solution stays unique. Greedy removal stalls near 22-25 givens; below that it searches:
it puts one given back and tries to remove two others, a bounded number of times.
"""

from __future__ import annotations

import random

from vmd.sudoku.grid import UNITS

ALL = 0x1FF
PEERS = [sorted({j for unit in UNITS if i in unit for j in unit} - {i}) for i in range(81)]
CELL_UNITS = [[u for u in UNITS if i in u] for i in range(81)]
BITS = [[d for d in range(9) if m >> d & 1] for m in range(512)]
POP = [len(b) for b in BITS]


class _Contradiction(Exception):
    pass


def _assign(values, cand, i, d, stack):
    values[i] = d + 1
    cand[i] = 0
    bit = 1 << d
    for j in PEERS[i]:
        c = cand[j]
        if c & bit:
            c &= ~bit
            cand[j] = c
            if not c:
                raise _Contradiction
            if POP[c] == 1:
                stack.append(j)


def _propagate(values, cand, stack):
    while True:
        while stack:
            i = stack.pop()
            if values[i]:
                continue
            c = cand[i]
            if not c:
                raise _Contradiction
            _assign(values, cand, i, BITS[c][0], stack)
        for unit in UNITS:  # hidden singles
            once = twice = placed = 0
            for i in unit:
                v = values[i]
                if v:
                    placed |= 1 << (v - 1)
                else:
                    c = cand[i]
                    twice |= once & c
                    once |= c
            if (once | placed) != ALL:
                raise _Contradiction  # some digit has no place left in this unit
            hidden = once & ~twice & ~placed
            for d in BITS[hidden]:
                bit = 1 << d
                for i in unit:
                    if cand[i] & bit:
                        cand[i] = bit
                        stack.append(i)
                        break
        if not stack:
            return


def _start(grid):
    values = [0] * 81
    cand = [ALL] * 81
    stack: list[int] = []
    for i, v in enumerate(grid):
        if v:
            if not cand[i] >> (v - 1) & 1:
                raise _Contradiction
            _assign(values, cand, i, v - 1, stack)
    _propagate(values, cand, stack)
    return values, cand


def _search(values, cand, out, limit, rng):
    best, best_n = -1, 10
    for i in range(81):
        if not values[i]:
            n = POP[cand[i]]
            if n < best_n:
                best, best_n = i, n
                if n == 2:
                    break
    if best < 0:
        out.append(tuple(values))
        return
    digits = BITS[cand[best]]
    if rng is not None:
        digits = rng.sample(digits, len(digits))
    for d in digits:
        v2, c2 = values[:], cand[:]
        try:
            stack: list[int] = []
            _assign(v2, c2, best, d, stack)
            _propagate(v2, c2, stack)
        except _Contradiction:
            continue
        _search(v2, c2, out, limit, rng)
        if len(out) >= limit:
            return


def solutions(grid, limit: int = 2, rng: random.Random | None = None) -> list[tuple[int, ...]]:
    """Up to ``limit`` solutions of ``grid`` (81 ints, 0 blank); digits tried in random order with ``rng``."""
    try:
        values, cand = _start(grid)
    except _Contradiction:
        return []
    out: list[tuple[int, ...]] = []
    _search(values, cand, out, limit, rng)
    return out


def count_solutions(grid, limit: int = 2) -> int:
    return len(solutions(grid, limit))


def random_solution(rng: random.Random) -> tuple[int, ...]:
    """A uniformly seeded random complete grid."""
    return solutions([0] * 81, 1, rng)[0]


def _unique_without(grid: list[int], i: int, digit: int) -> bool:
    """Whether ``grid`` (one solution, in which cell i holds ``digit``) keeps one solution when
    cell i is blanked: no solution may have another digit there."""
    try:
        values, cand = _start(grid[:i] + [0] + grid[i + 1:])
    except _Contradiction:
        return False
    if values[i]:
        return True  # propagation alone forces the digit back
    cand[i] &= ~(1 << (digit - 1))
    if not cand[i]:
        return True
    try:
        stack = [i] if POP[cand[i]] == 1 else []
        _propagate(values, cand, stack)
    except _Contradiction:
        return True
    out: list[tuple[int, ...]] = []
    _search(values, cand, out, 1, None)
    return not out


def make_puzzle(rng: random.Random, min_givens: int, max_givens: int, search: int = 60,
                attempts: int = 50) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A puzzle with a unique solution and a number of givens drawn from [min_givens, max_givens],
    and its solution. Raises ValueError when ``attempts`` fresh grids all stay above the range."""
    target = rng.randint(min_givens, max_givens)
    for _ in range(attempts):
        solution = random_solution(rng)
        grid = list(solution)
        order = list(range(81))
        rng.shuffle(order)
        for i in order:  # greedy pass
            if sum(1 for v in grid if v) <= target:
                break
            if _unique_without(grid, i, grid[i]):
                grid[i] = 0
        givens = [i for i in range(81) if grid[i]]
        tries = 0
        while len(givens) > target and tries < search:  # put one back, take two out
            tries += 1
            back = rng.choice([i for i in range(81) if not grid[i]])
            grid[back] = solution[back]
            removed = 0
            for i in rng.sample(givens, len(givens)):
                if i != back and _unique_without(grid, i, grid[i]):
                    grid[i] = 0
                    removed += 1
                    if removed == 2:
                        break
            if removed == 0:  # nothing else could go: back to where we were (unique without it)
                grid[back] = 0
            givens = [i for i in range(81) if grid[i]]
        if min_givens <= len(givens) <= max_givens:
            return tuple(grid), solution
    raise ValueError(f"no puzzle with {min_givens}-{max_givens} givens after {attempts} grids; allow more givens")
