import pytest

from vmd.runtime.errors import DataError
from vmd.sudoku.grid import conflicts, is_solved, parse, read_puzzles, to_line

SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def grid_of(s):
    return tuple(0 if ch == "." else int(ch) for ch in s)


def as_rows(line, blank="."):
    return [line[i:i + 9].replace(".", blank) for i in range(0, 81, 9)]


@pytest.mark.parametrize("blank", [".", "0", "_", "*", "X"])
def test_81_character_lines_with_every_blank_mark(blank):
    text = PUZZLE.replace(".", blank) + "\n" + SOLUTION + "\n"
    a, b = parse(text, "f.sdm")
    assert a.grid == grid_of(PUZZLE) and b.grid == grid_of(SOLUTION)
    assert a.givens == 30 and a.source == "f.sdm:1" and b.source == "f.sdm:2"


def test_81_character_line_with_its_solution_beside_it():
    (p,) = parse(f"{PUZZLE} {SOLUTION}\n")
    assert p.solution == grid_of(SOLUTION)


def test_sdk_grids_with_header_lines_and_several_per_file():
    text = "#A Author\n#D a comment\n" + "\n".join(as_rows(PUZZLE)) + "\n\n" + "\n".join(as_rows(SOLUTION)) + "\n"
    a, b = parse(text, "x.sdk")
    assert a.grid == grid_of(PUZZLE) and b.grid == grid_of(SOLUTION)
    assert a.source == "x.sdk:3"


def test_grids_drawn_with_box_borders():
    rows = as_rows(PUZZLE)
    drawn = []
    for i, r in enumerate(rows):
        if i in (3, 6):
            drawn.append("---+---+---")
        drawn.append(f"{r[:3]}|{r[3:6]}|{r[6:]}")
    starred = ["*-----------*"] + [f"| {r[:3]} | {r[3:6]} | {r[6:]} |" for r in rows] + ["*-----------*"]
    assert parse("\n".join(drawn))[0].grid == grid_of(PUZZLE)
    assert parse("\n".join(starred))[0].grid == grid_of(PUZZLE)


@pytest.mark.parametrize("header", ["quizzes,solutions", "puzzle,solution", "id,puzzle,solution,clues"])
def test_csv_with_a_header(header):
    cols = header.split(",")
    values = {"quizzes": PUZZLE.replace(".", "0"), "puzzle": PUZZLE.replace(".", "0"), "solutions": SOLUTION,
              "solution": SOLUTION, "id": "7", "clues": "30"}
    text = header + "\n" + ",".join(values[c] for c in cols) + "\n"
    (p,) = parse(text, "k.csv")
    assert p.grid == grid_of(PUZZLE) and p.solution == grid_of(SOLUTION) and p.source == "k.csv:2"


def test_writers_round_trip():
    (p,) = parse(PUZZLE)
    assert to_line(p.grid) == PUZZLE
    assert parse(to_line(p.grid))[0] == p


@pytest.mark.parametrize("text, message", [
    (PUZZLE[:80] + "\n", "f:1: 80 cells"),
    (PUZZLE[:40] + "a" + PUZZLE[41:] + "\n", "f:1: bad character 'a' at position 41"),
    ("55" + PUZZLE[2:] + "\n", "f:1: givens conflict (two 5s in row 1)"),
    ("\n".join(as_rows(PUZZLE)[:5]) + "\n", "f:1: grid has 5 rows, expected 9"),
    ("\n".join(as_rows(PUZZLE)[:5]) + "\n\n" + PUZZLE, "f:1: grid has 5 rows, expected 9"),
    ("puzzle,solution\n" + PUZZLE + "," + SOLUTION[:-1] + "2\n", "f:2: the solution given does not solve the puzzle"),
    ("quizzes\n123\n", "f:2: puzzle has 3 cells, expected 81"),
    pytest.param('puzzle\n"' + ("1" * 1000 + "\n") * 140, "bad CSV (field larger than field limit", id="csv-field"),
])
def test_malformed_input_names_the_line_and_the_reason(text, message):
    with pytest.raises(DataError) as e:
        parse(text, "f")
    assert message in str(e.value)


def test_read_puzzles_reports_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_puzzles(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(DataError, match="no puzzles found"):
        read_puzzles(tmp_path / "empty.txt")


def test_checker():
    sol, puz = grid_of(SOLUTION), grid_of(PUZZLE)
    assert is_solved(sol, puz) and not conflicts(sol)
    swapped = list(sol)
    swapped[0], swapped[1] = swapped[1], swapped[0]  # rows still fine, columns break
    assert not is_solved(swapped, [0] * 81) and conflicts(swapped)
    assert not is_solved(sol[:80] + (0,), puz)  # incomplete
    other_given = list(puz)
    other_given[2] = 1  # a given the grid does not keep
    assert not is_solved(sol, other_given)


def test_the_drawn_grid_of_vmd_solve_reads_back():
    from vmd_cli.sudoku import draw

    g = grid_of(PUZZLE)
    drawn = draw(g, g, set()).plain
    assert "|" in drawn and "+" in drawn
    assert parse(drawn)[0].grid == g


def test_a_byte_order_mark_is_dropped_on_stdin_and_in_files(tmp_path, monkeypatch):
    import io
    import sys

    bom = b"\xef\xbb\xbf" + PUZZLE.encode() + b"\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bom), encoding="utf-8"))
    (p,) = read_puzzles("-")
    assert p.grid == grid_of(PUZZLE) and p.source == "<stdin>:1"
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ufeff" + PUZZLE + "\n"))  # a stream with no bytes under it
    assert read_puzzles("-")[0].grid == grid_of(PUZZLE)
    f = tmp_path / "bom.sdk"
    f.write_bytes(b"\xef\xbb\xbf" + "\n".join(as_rows(PUZZLE)).encode())
    assert read_puzzles(f)[0].grid == grid_of(PUZZLE)


def test_a_directory_or_an_empty_file_is_named_for_what_it_is(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_puzzles(tmp_path)
    with pytest.raises(DataError, match=r"^/dev/null: is empty: no puzzles$"):
        read_puzzles("/dev/null")
    (tmp_path / "zero.txt").write_bytes(b"")
    with pytest.raises(DataError, match="zero.txt: is empty: no puzzles"):
        read_puzzles(tmp_path / "zero.txt")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="bin.dat: not a text file"):
        read_puzzles(tmp_path / "bin.dat")


@pytest.mark.parametrize("head", ["", "puzzle,solution\n"])
def test_an_overlong_line_is_refused_after_reading_a_bounded_part_of_it(tmp_path, monkeypatch, head):
    import io
    import sys
    import time
    import tracemalloc

    f = tmp_path / "one-line.txt"
    f.write_text(head + "1" * 8_000_000 + "\n")
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_puzzles(f)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    line = 2 if head else 1
    assert str(e.value) == f"{f}:{line}: line longer than 1024 characters (no puzzle format has lines that long)"
    assert peak < 1_000_000 and seconds < 1.0  # the 8 MB line is never held whole
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f.read_bytes()), encoding="utf-8"))
    with pytest.raises(DataError, match=f"<stdin>:{line}: line longer than 1024"):
        read_puzzles("-")


def test_json_gives_a_solution_only_when_solved():
    import json

    from vmd.sudoku.grid import Puzzle, to_json

    p = Puzzle(grid_of(PUZZLE))
    assert json.loads(to_json(p, grid_of(SOLUTION), True)) == {"puzzle": PUZZLE, "solved": True, "solution": SOLUTION}
    wrong = SOLUTION[1] + SOLUTION[0] + SOLUTION[2:]
    row = json.loads(to_json(p, grid_of(wrong)))  # checked when not told
    assert row == {"puzzle": PUZZLE, "solved": False, "solution": None, "attempt": wrong}
    assert json.loads(to_json(p)) == {"puzzle": PUZZLE}
