"""vmd play, driven headless by Textual's Pilot, with the bundled models."""

import asyncio
import random

from vmd_cli.play import build_app
from vmd_cli.play.board import Board


def drive(script, size=(80, 24), **kwargs):
    """Run ``script(app, pilot)`` against a headless app; returns what the script returns."""

    async def main():
        app = build_app(**kwargs)
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            return await script(app, pilot)

    return asyncio.run(main())


async def settle(app, pilot):
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


def board_text(app, key):
    return str(app.screen.query_one(f"#board-{key}", Board).render())


def test_step_play_to_the_end_and_reset():
    async def script(app, pilot):
        screen = app.screen
        assert screen.ready() and screen.step == 0
        start = board_text(app, "vmd")
        await pilot.press("space", "space")
        assert screen.step == 2 and board_text(app, "vmd") != start  # cells were filled
        for _ in range(4):
            await pilot.press("plus")
        await pilot.press("p")
        for _ in range(60):
            await pilot.pause(0.1)
            if screen.step == screen.settings.nfe:
                break
        status = str(screen.query_one("#status-vmd").render())
        assert screen.step == 10 and "10/10" in status and ("solved" in status or "invalid" in status)
        await pilot.press("r")
        assert screen.step == 0 and board_text(app, "vmd") == start

    drive(script)


def test_z_draws_a_new_latent_and_reruns_the_vmd(monkeypatch):
    # whether a new z changes the filled digits depends on the model (the bundled VMD's
    # decoder barely reads z); what the key must do is rerun the VMD alone with a new draw
    import vmd_cli.play.sudoku as play_sudoku

    calls = []

    def spy(model, grid, **kw):
        calls.append((model.has_latent, kw["seed"], kw["nfe"]))
        return real_trace(model, grid, **kw)

    real_trace = play_sudoku.trace
    monkeypatch.setattr(play_sudoku, "trace", spy)

    async def script(app, pilot):
        screen = app.screen
        await pilot.press("left_square_bracket", "left_square_bracket")  # NFE 10 -> 5 -> 3
        await settle(app, pilot)
        assert screen.settings.nfe == 3
        mdm_before = screen.sides["mdm"].trace.frames
        calls.clear()
        await pilot.press("z")
        await settle(app, pilot)
        await pilot.press("z")
        await settle(app, pilot)
        assert [c[0] for c in calls] == [True, True]  # only the VMD reran, once per press
        seeds = [c[1] for c in calls]
        assert len(set(seeds)) == 2 and all(c[2] == 3 for c in calls)
        assert screen.sides["vmd"].draws == 2 and screen.sides["vmd"].trace.nfe == 3
        assert screen.sides["mdm"].trace.frames == mdm_before  # the MDM has no z: same run
        assert "z draw 3" in str(screen.query_one("#title-vmd").render())

    drive(script, puzzle=None)


def test_an_mdm_on_the_right_has_no_latent_to_redraw():
    from vmd.models import bundled_path

    async def script(app, pilot):
        await pilot.press("z")
        await pilot.pause()
        return [n.message for n in app._notifications]

    messages = drive(script, vmd=bundled_path("sudoku-mdm"))
    assert any("no latent" in m for m in messages)


def test_boards_are_titled_by_what_their_models_are():
    from textual.widgets import Label

    async def script(app, pilot):
        return [str(app.screen.query_one(f"#title-{k}", Label).render()).split(" · ")[0] for k in ("mdm", "vmd")]

    assert drive(script) == ["MDM", "VMD"]
    assert drive(script, mdm="sudoku-vmd", vmd="sudoku-mdm") == ["VMD sudoku-vmd", "MDM sudoku-mdm"]


def test_a_malformed_puzzle_shows_an_error_not_a_crash():
    async def script(app, pilot):
        await pilot.press("e")
        await pilot.pause()
        await pilot.press(*"12345", "enter")
        await pilot.pause()
        error = str(app.screen.query_one("#error").render())
        assert "5 cells" in error
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "SudokuScreen"
        line = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
        await pilot.press("e")
        await pilot.pause()
        for ch in line:
            await pilot.press(ch if ch != "." else "full_stop")
        await pilot.press("enter")
        await settle(app, pilot)
        screen = app.screen
        assert screen.puzzle.givens == 30 and screen.ready() and "entered" in screen.puzzle.source

    drive(script)


def test_help_screen_lists_the_keys():
    async def script(app, pilot):
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "SudokuScreen"

    drive(script)


def test_first_screen_snapshot(snap_compare):
    async def run_before(pilot):
        await settle(pilot.app, pilot)

    assert snap_compare(build_app(), terminal_size=(80, 24), run_before=run_before)


def test_a_blank_board_counts_the_distinct_valid_grids_its_z_draws_find(monkeypatch):
    """The keys b (blank) and o (open puzzle); each z draw that ends in a valid grid adds it to the
    VMD's count, the same grid twice counts once. The trace is stubbed to a valid grid per seed
    (the bundled models, trained on unique puzzles, rarely complete a blank board in 10 steps)."""
    import random

    import vmd_cli.play.sudoku as play_sudoku
    from vmd.sudoku.solve import Trace
    from vmd.sudoku.solver import solutions

    def fake(model, grid, **kw):
        done = solutions(list(grid), 1, random.Random(kw["seed"] // 1000 % 2))[0]  # two grids, draw by draw
        return Trace([list(grid), list(done)], [0] * 81, True)

    monkeypatch.setattr(play_sudoku, "trace", fake)

    async def script(app, pilot):
        screen = app.screen
        await pilot.press("b")
        await settle(app, pilot)
        assert screen.puzzle.givens == 0 and "blank" in screen.puzzle.source
        for _ in range(3):
            await pilot.press("z")
            await settle(app, pilot)
        assert len(screen.sides["vmd"].found) == 2
        assert "2 valid grids" in str(screen.query_one("#status-vmd").render())
        await pilot.press("o")
        await settle(app, pilot)
        assert "open" in screen.puzzle.source and 17 <= screen.puzzle.givens < 40
        assert len(screen.sides["vmd"].found) == 1  # a new puzzle: counted afresh (its first run)

    drive(script, puzzle=None)


def test_a_tiny_terminal_survives_a_storm_of_keys():
    """40x10 and 150 keys drawn at random (the audit pressed 1,600 by hand): no exception, and once
    the workers settle the app still runs with both sides' traces ready."""
    keys = ["space", "p", "r", "z", "right_square_bracket", "left_square_bracket", "s", "g", "h", "o", "b",
            "plus", "minus", "left", "right", "question_mark", "escape", "e", "escape", "1", "enter"]
    rng = random.Random(0)

    async def script(app, pilot):
        for _ in range(150):
            await pilot.press(rng.choice(keys))
        await pilot.press("escape", "escape")
        await settle(app, pilot)
        return app.is_running, app.screen.ready()

    assert drive(script, size=(40, 10)) == (True, True)
