"""The text screen of ``vmd play --text``: BD3 left, block VMD right, filling the same blocks after the
same prompt with the same steps per block and seed, one step at a time (vmd/blockwise.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from vmd.blockwise import check_generation, generate_blocks
from vmd.runtime.errors import ConfigError, DataError
from vmd_cli.common import GENERATION_OPTIONS, load_any, model_label, task_label
from vmd_cli.console import fail
from vmd_cli.play.playback import SPEED_BINDINGS, STEP_BINDINGS, Playback

DEFAULT_BD3 = "shakespeare-bd3-block4"
SCREENFUL = 512  # characters shown by default: about a side's panel at 80x24 to 120x40
DEFAULT_VMD = "shakespeare-block4-k1"  # the few-step block VMD: at its one step per block it parts from BD3
HIGHLIGHT = "bold black on yellow"  # the characters revealed in the step shown
NEWLINE = "↵"  # a newline shows as this mark, then breaks the line
# control characters (ESC and the other C0 codes, DEL, the C1 codes) never reach the terminal: a C0
# code shows as its Unicode control picture (ESC as ␛), the others as ⍰
_VISIBLE = {c: chr(0x2400 + c) for c in range(32) if c != 10} | {0x7F: "\u2421"} | {c: "\u2370" for c in range(0x80, 0xA0)}


def visible(text: str) -> str:
    """``text`` with its control characters (but newlines) shown as pictures, safe for a terminal."""
    return text.translate(_VISIBLE)

INTRO = ("BD3 left, block VMD right: the same prompt, blocks, steps per block and seed. Blocks are made left to "
         "right; inside the current block (underlined) this step's characters are highlighted, and _ is still "
         "masked. z redraws the VMD's latent from the current block on; the blocks before it stay.")
KEYS = (
    ("space", "one step"), ("p", "play / pause"), ("r", "back to the start"), ("+ / -", "faster / slower"),
    ("] / [", "more / fewer steps per block (1 to the block size)"),
    ("z", "new latent z for the VMD from the current block on"),
    ("e", "edit the prompt (\\n is a newline; enter runs both again, escape leaves it)"),
    ("?", "this help"), ("q", "quit"),
)


@dataclass
class Frame:
    """The sequence after step ``index`` of ``steps`` in block ``block`` (index 0: before the block's first)."""

    block: int
    index: int
    steps: int
    ids: torch.Tensor  # (total,) the mask id where still masked or not yet made
    revealed: torch.Tensor  # (total,) bool: filled in this step


@dataclass
class TextSide:
    """One panel's model and its current run (``frames``: None while it is being computed)."""

    name: str
    model: object
    schedule: object
    frames: list[Frame] | None = None
    draws: int = 0  # how many times z was drawn anew (the seed offset)


@dataclass
class TextSettings:
    prompt: str
    length: int
    steps: int
    seed: int
    strategy: str
    temperature: float
    z_policy: str
    speed: int = 2  # index into playback.SPEEDS


def trace_text(model, prefix: torch.Tensor, s: TextSettings, seed: int, schedule) -> list[Frame]:
    """Every step of one sample after ``prefix`` (1-D ids), the frame before the first step included."""
    from vmd.rng import sample_generators

    bs = model.block_size
    total = model.length if model.blocks == 1 else -(-s.length // bs) * bs
    start = torch.full((total,), model.mask_id, dtype=torch.long)
    start[:prefix.numel()] = prefix
    first = min(prefix.numel() // bs, total // bs - 1)
    frames = [Frame(first, 0, s.steps, start, torch.zeros(total, dtype=torch.bool))]

    def seen(step):
        frames.append(Frame(step.block, step.index, step.steps, step.x[0].cpu(), step.revealed[0].cpu()))

    generate_blocks(model, 1, s.length, steps_per_block=s.steps, prompt=prefix, strategy=s.strategy,
                    temperature=s.temperature, z_policy=s.z_policy, schedule=schedule,
                    generator=sample_generators(seed, 1), on_step=seen, device=torch.device("cpu"))
    return frames


def render_frame(frame: Frame, tokens: list[str], mask_id: int, prompt_len: int, block_size: int, length: int) -> Text:
    """The text up to the end of the frame's block: the prompt bold, the current block underlined, this
    step's characters highlighted, still-masked ones a dim ``_``; a newline is a mark and a line break."""
    lo = frame.block * block_size
    ids, revealed = frame.ids.tolist(), frame.revealed.tolist()
    text = Text()
    for i, token in enumerate(tokens[:min(lo + block_size, length)]):
        if ids[i] == mask_id:
            style = "dim underline"
        elif revealed[i]:
            style = HIGHLIGHT
        else:
            style = ("bold" if i < prompt_len else "") + (" underline" if i >= lo else "")
        token = visible(token)
        for part in token.split("\n")[:-1]:
            text.append(part + NEWLINE, style=style or "dim")
            text.append("\n")
        text.append(token.split("\n")[-1], style=style)
    return text


def load_text_model(source: Optional[str], bundled: str):
    """(model, config, task, title): a text model by any name; anything else is a one-line error."""
    model, cfg, _, _, task = load_any(source or bundled, "cpu", with_task=True)
    if not hasattr(task, "encode_prompt"):
        fail(f"{source or bundled} is a {task_label(cfg)} model: vmd play --text takes text models (e.g. {bundled})")
    title = model_label(cfg, model) + ("" if source is None else f" {Path(source).name}")
    return model, cfg, task, title


def build_text_app(bd3: Optional[str] = None, vmd: Optional[str] = None, prompt: str = "",
                   steps_per_block: Optional[int] = None, length: Optional[int] = None, seed: int = 0,
                   strategy: Optional[str] = None):
    """The app on its text screen; the options are checked against both models before it starts."""
    from vmd.schedule import make_schedule
    from vmd_cli.play.app import PlayApp

    right = load_text_model(vmd, DEFAULT_VMD)  # first: --vmd sudoku-mdm is refused whatever the left one is
    left = load_text_model(bd3, DEFAULT_BD3)
    if not left[2].same_vocabulary(right[2]):
        fail(f"{left[3]} and {right[3]} have different vocabularies: give two models trained on the same corpus")
    sc = right[1].sample
    if length is None:  # a screenful where both models slide past their length (rotary), else their length
        slide = left[0].cache_window is not None and right[0].cache_window is not None
        length = SCREENFUL if slide else min(left[0].length, right[0].length)
    steps = min(sc.nfe, left[0].block_size, right[0].block_size) if steps_per_block is None else steps_per_block
    ids = right[2].encode_prompt(prompt)
    for model, *_ in (left, right):
        check_generation(model, length, steps, ids.numel(), GENERATION_OPTIONS)
    settings = TextSettings(prompt, length, steps, seed, strategy or sc.strategy, sc.temperature, sc.z_policy)
    sides = [TextSide(title, model, make_schedule(cfg.diffusion.schedule)) for model, cfg, _, title in (left, right)]
    return PlayApp(lambda: TextScreen(sides[0], sides[1], right[2], settings))


class TextScreen(Playback, Screen):
    """The text task: ``pos`` (Playback's frame shown) counts the steps of all blocks, the first frame before any."""

    AUTO_FOCUS = ""  # keys go to the screen; e (or a click) goes to the prompt
    PLAY_HELP = (INTRO, KEYS)  # for the help screen (app.py)
    BINDINGS = [
        *STEP_BINDINGS,
        Binding("z", "new_z", "new z"),
        Binding("right_square_bracket", "steps(1)", "steps+"),
        Binding("left_square_bracket", "steps(-1)", "steps-"),
        *SPEED_BINDINGS,
        Binding("e", "edit", "prompt"),
        Binding("question_mark", "app.help", "help", key_display="?"),
        Binding("q", "app.quit", "quit"),
    ]
    DEFAULT_CSS = """
    #prompt-row { height: 1; padding: 0 1; }
    #prompt-row > Label { width: auto; }
    #prompt { width: 1fr; }
    #error { height: auto; padding: 0 1; color: $error; display: none; }
    #sides { height: 1fr; }
    .side { width: 1fr; height: 1fr; }
    .title { width: 100%; height: 1; text-style: bold; content-align: center middle; text-overflow: ellipsis; }
    .panel { height: 1fr; border: round $primary; padding: 0 1; }
    .status { height: 1; padding: 0 1; }
    #info { height: auto; padding: 0 1; color: $text-muted; }
    #keys { height: auto; padding: 0 1; }
    """

    def __init__(self, bd3: TextSide, vmd: TextSide, task, settings: TextSettings):
        super().__init__()
        self.sides = {"bd3": bd3, "vmd": vmd}
        self.text_task, self.settings = task, settings
        self.block_size = min(bd3.model.block_size, vmd.model.block_size)
        self.prompt_ids = task.encode_prompt(settings.prompt)
        self.job = 0  # the newest run asked for: an older one's result is dropped

    def compose(self) -> ComposeResult:
        with Horizontal(id="prompt-row"):
            yield Label("prompt ")
            yield Input(visible(self.settings.prompt.replace("\n", "\\n")), placeholder="text to continue (e, then enter; "
                        "\\n is a newline)", id="prompt", compact=True)
        yield Static("", id="error")
        with Horizontal(id="sides"):
            for key, side in self.sides.items():
                with Vertical(classes="side"):
                    yield Label(side.name, classes="title", id=f"title-{key}")
                    with VerticalScroll(classes="panel", id=f"panel-{key}"):
                        yield Static("", id=f"text-{key}")
                    yield Static("", classes="status", id=f"status-{key}")
        yield Static("", id="info")
        yield Footer(compact=True)  # the keys, once

    def on_mount(self) -> None:
        self.recompute()

    # --- sampling, off the UI thread ------------------------------------------------------
    def recompute(self, which=("bd3", "vmd"), block: int | None = None) -> None:
        """Run ``which`` sides again: from the prompt, or (``block``) after the blocks before ``block``,
        which are kept, and their frames with them."""
        self.job += 1
        if block is None:
            self.pos = 0
        kept = {}
        for key in which:
            side = self.sides[key]
            kept[key] = [] if block is None else [f for f in side.frames if f.block < block]
            side.frames = None
        self.refresh_view()
        self.run_models(self.job, kept, block)

    @work(thread=True, group="sample")
    def run_models(self, job: int, kept: dict, block: int | None) -> None:
        out = {}
        p = self.prompt_ids.numel()
        for key, frames in kept.items():
            side = self.sides[key]
            prefix = self.prompt_ids if not frames else frames[-1].ids[:max(p, block * side.model.block_size)]
            new = trace_text(side.model, prefix, self.settings, self.settings.seed + 1000 * side.draws, side.schedule)
            out[key] = frames + new[1:] if frames else new
        self.app.call_from_thread(self.show_frames, job, out)

    def show_frames(self, job: int, frames: dict) -> None:
        if job != self.job:
            return  # the settings moved on while this ran; a newer run is coming
        for key, f in frames.items():
            self.sides[key].frames = f
        self.refresh_view()

    # --- what Playback asks for -------------------------------------------------------------
    def ready(self) -> bool:
        return all(side.frames is not None for side in self.sides.values())

    def last(self) -> int:
        return max(len(side.frames) for side in self.sides.values()) - 1

    def frame(self, key: str) -> Frame:
        frames = self.sides[key].frames
        return frames[min(self.pos, len(frames) - 1)]

    # --- drawing --------------------------------------------------------------------------
    def rendered(self, key: str) -> Text:
        side, frame = self.sides[key], self.frame(key)
        tokens = self.text_task.format(frame.ids.reshape(-1, 1))
        return render_frame(frame, tokens, side.model.mask_id, self.prompt_ids.numel(), side.model.block_size,
                            self.settings.length)

    def refresh_view(self) -> None:
        s = self.settings
        for key, side in self.sides.items():
            self.query_one(f"#title-{key}", Label).update(side.name)
            status = self.query_one(f"#status-{key}", Static)
            if side.frames is None:
                self.query_one(f"#text-{key}", Static).update(Text("working...", style="dim"))
                status.update("")
                continue
            frame = self.frame(key)
            self.query_one(f"#text-{key}", Static).update(self.rendered(key))
            self.query_one(f"#panel-{key}", VerticalScroll).scroll_end(animate=False)  # after the layout
            blocks = len(frame.ids) // side.model.block_size
            done = " · done" if self.pos >= len(side.frames) - 1 else ""
            draw = f" · z draw {side.draws + 1}" if key == "vmd" else ""
            status.update(f"block {frame.block + 1}/{blocks} · step {frame.index}/{frame.steps}{draw}{done}")
        self.query_one("#info", Static).update(
            f"{s.steps}/{self.block_size} steps per block · {s.length} tokens · {s.strategy} · seed {s.seed} · "
            f"{self.play_state()}")

    def show_error(self, message: str) -> None:
        error = self.query_one("#error", Static)
        error.update(message)
        error.display = bool(message)

    # --- actions ----------------------------------------------------------------------------
    def action_steps(self, delta: int) -> None:
        steps = max(1, min(self.block_size, self.settings.steps + delta))
        if steps != self.settings.steps:
            self.settings.steps = steps
            self.sides["vmd"].draws = 0
            self.recompute()

    def action_new_z(self) -> None:
        vmd = self.sides["vmd"]
        if not vmd.model.random_latent:
            self.notify("The right-hand model has no latent z to redraw.", severity="warning")
            return
        if not self.ready():
            return
        vmd.draws += 1
        self.recompute(("vmd",), self.frame("vmd").block)  # the step shown stays: the new block shows at once

    def action_edit(self) -> None:
        self.query_one("#prompt", Input).focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.focused is not None:
            self.set_focus(None)
            event.stop()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.replace("\\n", "\n")  # the field is one line: a newline is typed as \n
        try:
            ids = self.text_task.encode_prompt(prompt)
            for side in self.sides.values():
                check_generation(side.model, self.settings.length, self.settings.steps, ids.numel())
        except (DataError, ConfigError) as e:
            self.show_error(str(e))
            return
        self.show_error("")
        self.set_focus(None)
        self.settings.prompt, self.prompt_ids = prompt, ids
        self.sides["vmd"].draws = 0
        self.recompute()
