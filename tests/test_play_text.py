"""vmd play --text, driven headless by Textual's Pilot, with a tiny BD3 and a tiny block VMD trained here."""

import asyncio

import pytest
from textual.widgets import Input, Label, Static

from test_play import settle
from test_text_train import CORPUS, TINY, vmd
from vmd_cli.play import build_app
from vmd_cli.play.text import HIGHLIGHT, NEWLINE


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of two steps, trained in this process (a subprocess each would double the time)."""
    from vmd import config as C
    from vmd.train import train

    tmp = tmp_path_factory.mktemp("playtext")
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    other = tmp / "other.txt"  # another vocabulary
    other.write_text("to be or not to be\n" * 200)
    out = {"bd3": tmp / "bd3", "vmd": tmp / "vmd", "other": tmp / "other", "mix": tmp / "mix"}
    for key, preset, text in (("bd3", "shakespeare-bd3-block4", corpus), ("vmd", "shakespeare-block4", corpus),
                              ("other", "shakespeare-bd3-block4", other), ("mix", "shakespeare-block4-k1", corpus)):
        train(C.load(preset, None, TINY[1::2] + [f"task.file={text}", "train.steps=2"]), out[key])
    return out


def drive(runs, script, size=(80, 24), right="vmd", **kwargs):
    """Run ``script(app, pilot)`` against the text screen; returns what the script returns."""

    async def main():
        app = build_app(text=True, bd3=str(runs["bd3"]), vmd=str(runs[right]), **kwargs)
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            return await script(app, pilot)

    return asyncio.run(main())


def shown(app, key):
    """The panel's text as drawn (a rich Text, its styles included)."""
    return app.screen.query_one(f"#text-{key}", Static).content


def tokens(app, ids):
    return app.screen.text_task.format(ids.reshape(-1, 1))


def test_starts_at_80x24_with_both_panels_and_the_prompt(runs):
    async def script(app, pilot):
        screen = app.screen
        assert type(screen).__name__ == "TextScreen" and screen.ready() and screen.pos == 0
        assert screen.query_one("#prompt", Input).value == "All:\\nSpeak" and screen.focused is None  # one line
        for wid in ("#prompt", "#title-bd3", "#title-vmd", "#panel-bd3", "#panel-vmd", "#status-bd3", "#status-vmd",
                    "#info"):
            region = screen.query_one(wid).region
            assert region.width > 0 and region.height > 0 and region.right <= 80 and region.bottom <= 24, wid
        assert screen.query_one("#panel-bd3").region.right <= screen.query_one("#panel-vmd").region.x
        titles = [str(screen.query_one(f"#title-{k}", Label).render()) for k in ("bd3", "vmd")]
        for key in ("bd3", "vmd"):
            assert shown(app, key).plain.startswith(f"All:{NEWLINE}\nSpeak") and "_" in shown(app, key).plain
        assert "4/4 steps per block" in str(screen.query_one("#info").render())
        await pilot.press("question_mark")
        await pilot.pause()
        help_text = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert type(app.screen).__name__ == "HelpScreen" and "steps per block" in help_text
        return titles

    assert drive(runs, script, prompt="All:\nSpeak") == ["BD3 block 4 bd3", "block VMD block 4 vmd"]


def test_stepping_reveals_characters_and_highlights_this_steps_only(runs):
    async def script(app, pilot):
        screen = app.screen
        for key in ("bd3", "vmd"):  # this step's characters are exactly those that were masked the step before
            assert screen.last() == len(screen.sides[key].frames) - 1
        steps = 0
        while screen.pos < screen.last():
            before = {k: screen.frame(k).ids.clone() for k in ("bd3", "vmd")}
            await pilot.press("space")
            steps += 1
            for key in ("bd3", "vmd"):
                frame, mask = screen.frame(key), screen.sides[key].model.mask_id
                new = [i for i in range(len(frame.ids)) if before[key][i] == mask and frame.ids[i] != mask]
                assert new and frame.revealed.nonzero().flatten().tolist() == new
                text = shown(app, key)
                lit = [text.plain[s.start:s.end] for s in text.spans if s.style == HIGHLIGHT]
                assert lit == [tokens(app, frame.ids)[i].replace("\n", NEWLINE) for i in new]
        assert steps == screen.last() and "done" in str(screen.query_one("#status-vmd").render())
        for key in ("bd3", "vmd"):
            frame = screen.frame(key)
            assert (frame.ids != screen.sides[key].model.mask_id).all() and "_" not in shown(app, key).plain
        await pilot.press("space")  # past the end: nothing moves
        assert screen.pos == screen.last()
        await pilot.press("r")
        assert screen.pos == 0 and not any(s.style == HIGHLIGHT for s in shown(app, "vmd").spans)

    drive(runs, script, prompt="Fir", length=20)


@pytest.mark.parametrize("right", ["vmd", "mix"])  # a Gaussian z per block; a mixture's class per block and step
def test_z_redraws_the_vmd_from_the_current_block_on_deterministically(runs, right):
    async def script(app, pilot):
        screen = app.screen
        while screen.frame("vmd").block < 3 or screen.frame("vmd").index < 2:
            await pilot.press("space")
        pos, block = screen.pos, screen.frame("vmd").block
        bd3_before = [f.ids for f in screen.sides["bd3"].frames]
        vmd_before = screen.sides["vmd"].frames
        await pilot.press("z")
        await settle(app, pilot)
        vmd_after = screen.sides["vmd"].frames
        assert screen.pos == pos and screen.frame("vmd").block == block and len(vmd_after) == len(vmd_before)
        assert [f.ids for f in screen.sides["bd3"].frames] == bd3_before  # the left side is not run again
        lo = block * 4
        old, new = vmd_before[-1].ids, vmd_after[-1].ids
        assert old[:lo].equal(new[:lo]) and not old[lo:].equal(new[lo:])  # the blocks before stay
        assert all(a.ids.equal(b.ids) for a, b in zip(vmd_before, vmd_after) if a.block < block)
        assert "z draw 2" in str(screen.query_one("#status-vmd").render())
        return new.tolist()

    first = drive(runs, script, seed=3, right=right, steps_per_block=2)
    assert drive(runs, script, seed=3, right=right, steps_per_block=2) == first  # a fixed seed: the same redraw


def test_brackets_change_the_steps_per_block_within_1_and_the_block_size(runs):
    async def script(app, pilot):
        screen = app.screen
        assert screen.settings.steps == 2
        await pilot.press("right_square_bracket")
        await settle(app, pilot)
        await pilot.press("right_square_bracket", "right_square_bracket")
        await settle(app, pilot)
        assert screen.settings.steps == 4 and all(f.steps == 4 for f in screen.sides["vmd"].frames)
        for _ in range(5):
            await pilot.press("left_square_bracket")
        await settle(app, pilot)
        assert screen.settings.steps == 1 and screen.pos == 0
        for key in ("bd3", "vmd"):  # one step per block: a frame per block of 4 (after the start)
            frames = screen.sides[key].frames
            assert len(frames) == 1 + 16 // 4 and all(f.steps == 1 and f.revealed.sum() == 4 for f in frames[1:])
        assert "1/4 steps per block" in str(screen.query_one("#info").render())

    drive(runs, script, steps_per_block=2, length=16)


def test_a_prompt_outside_the_vocabulary_is_an_error_in_the_app(runs):
    async def script(app, pilot):
        screen = app.screen
        before = screen.sides["vmd"].frames
        await pilot.press("e")
        assert screen.focused is screen.query_one("#prompt", Input)
        screen.query_one("#prompt", Input).value = "Zebra"
        await pilot.press("enter")
        await settle(app, pilot)
        error = screen.query_one("#error", Static)
        assert error.display and "outside this run's vocabulary" in str(error.render()) and "'Z'" in str(error.render())
        assert type(app.screen).__name__ == "TextScreen" and screen.sides["vmd"].frames is before
        screen.query_one("#prompt", Input).value = "speak " * 6
        await pilot.press("enter")
        assert "more than the length 24" in str(error.render())
        await pilot.press("ctrl+shift+a", *"Speak", "enter")  # typed over the field: runs both, keys go back
        await settle(app, pilot)
        assert not error.display and screen.focused is None and screen.settings.prompt == "Speak"
        assert all(shown(app, k).plain.startswith("Speak") for k in ("bd3", "vmd"))
        await pilot.press("space")
        assert screen.pos == 1
        await pilot.press("e")
        screen.query_one("#prompt", Input).value = "All:\\nYou"  # \n typed in the field is a newline
        await pilot.press("enter")
        await settle(app, pilot)
        assert screen.settings.prompt == "All:\nYou" and shown(app, "vmd").plain.startswith(f"All:{NEWLINE}\nYou")

    drive(runs, script, length=24)


@pytest.mark.parametrize("args,words", [
    (["--text", "--vmd", "sudoku-mdm"], "sudoku-mdm is a sudoku model: vmd play --text takes text models"),
    (["--text", "--puzzle", "p.txt"], "--puzzle applies to Sudoku, not with --text"),
    (["--prompt", "First"], "--prompt applies with --text"),
    (["--text", "--bd3", "@other", "--vmd", "@vmd"], "BD3 block 4 other and block VMD block 4 vmd have different vocabularies"),
    (["--text", "--bd3", "@bd3", "--vmd", "@vmd", "-k", "5"], "--steps-per-block must be between 1 and the model's"),
])
def test_bad_play_options_are_one_line(runs, args, words):
    r = vmd("play", *[str(runs[a[1:]]) if a.startswith("@") else a for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {words}"), r.stderr


def test_a_text_longer_than_its_panel_keeps_the_newest_lines_in_view(runs):
    async def script(app, pilot):
        screen = app.screen
        panel = screen.query_one("#panel-vmd")
        while screen.pos < screen.last():
            await pilot.press("space")
            await pilot.pause()
            assert panel.scroll_y == panel.max_scroll_y, screen.pos
        assert panel.max_scroll_y > 0

    drive(runs, script, size=(80, 14), length=160, steps_per_block=1)  # a short terminal: it overflows soon


def test_at_80x24_each_title_is_one_line_the_keys_show_once_and_a_screenful_of_text_by_default(runs):
    async def script(app, pilot):
        screen = app.screen
        for key in ("bd3", "vmd"):
            title, panel = screen.query_one(f"#title-{key}"), screen.query_one(f"#panel-{key}")
            assert title.region.height == 1 and panel.region.y == title.region.bottom  # no wrap pushes a pane down
        assert screen.query_one("#panel-bd3").region.y == screen.query_one("#panel-vmd").region.y
        assert not screen.query("#keys")  # the footer lists the keys; nothing repeats them
        assert screen.settings.length == 512  # rotary models: a screenful, past their 32 trained characters
        return True

    assert drive(runs, script, right="mix")  # the longest title: block VMD block 4 (32-class mixture)


def test_control_characters_never_reach_the_terminal():
    import torch

    from vmd_cli.play.text import Frame, render_frame, visible

    tokens = list("ab\x1b]0;PWNED\x07\x1b[31mhi\x9b\x7f\ncd")
    n = len(tokens)
    frame = Frame(ids=torch.arange(n), revealed=torch.zeros(n, dtype=torch.bool), block=0, index=0, steps=1)
    shown = render_frame(frame, tokens, mask_id=999, prompt_len=2, block_size=n, length=n).plain
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert "\u241b]0;PWNED\u2407" in shown and "\u2370" in shown and "\u2421" in shown and "\ncd" in shown
    assert visible("plain text\n") == "plain text\n"
