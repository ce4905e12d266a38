"""What `vmd solve` prints: machine formats stay machine-clean, and what it says about bad input."""

import json

from typer.testing import CliRunner

from vmd_cli.main import app

runner = CliRunner()
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
IMPOSSIBLE = "12345678." + "........9" + "." * 63  # row 1 needs a 9 where column 9 already has one


def solve(tmp_path, *args, text=SOLUTION + "\n" + IMPOSSIBLE + "\n"):
    f = tmp_path / "two.txt"
    f.write_text(text)
    return runner.invoke(app, ["solve", str(f), "--nfe", "2", *args])


def test_line_format_prints_81_characters_a_puzzle_and_names_failures_on_stderr(tmp_path):
    r = solve(tmp_path, "--format", "line")
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines() == [SOLUTION, IMPOSSIBLE]  # the unsolved one comes back as given, blanks and all
    assert "solved 1/2" in r.stderr and "not solved: " in r.stderr and "two.txt:2" in r.stderr


def test_json_has_no_invalid_grid_under_solution(tmp_path):
    r = solve(tmp_path, "--format", "json")
    assert r.exit_code == 1, r.output
    good, bad = (json.loads(line) for line in r.stdout.splitlines())
    assert good == {"puzzle": SOLUTION, "solved": True, "solution": SOLUTION}
    assert bad["solved"] is False and bad["solution"] is None and bad["puzzle"] == IMPOSSIBLE
    assert len(bad["attempt"]) == 81 and bad["attempt"][:8] == "12345678"


def test_a_byte_order_mark_on_stdin_is_not_a_cell(tmp_path):
    r = runner.invoke(app, ["solve", "-", "--nfe", "2", "--format", "line"], input=b"\xef\xbb\xbf" + SOLUTION.encode())
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [SOLUTION]


def test_a_directory_or_dev_null_gets_one_line_saying_what_it_is(tmp_path):
    for path, words in ((tmp_path, "is a directory"), ("/dev/null", "/dev/null: is empty: no puzzles")):
        r = runner.invoke(app, ["solve", str(path)])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output
