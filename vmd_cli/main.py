"""The ``vmd`` command table: train, eval and sample declared here, solve, play and plot registered by
their modules on the same app; ``main`` runs it."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from vmd import config as C
from vmd.runtime.allocator import keep_freed_memory
from vmd.runtime.distributed import leave
from vmd_cli.common import (MODEL_HELP, LENGTH_HELP, STEPS_PER_BLOCK_HELP, app, check_z_policy, default_out, load_any,
                            model_label, parse_ints, sample_config, task_label)
from vmd_cli.console import Terminated, err, fail, friendly, out, print_error, show_metrics, terminate


@app.command(epilog="Examples:\n\n"
             "  vmd train --preset synthetic-2tok-vmd\n\n"
             "  vmd train --preset synthetic-d1-vmd --set train.steps=3000 --out runs/d1\n\n"
             "  vmd train --preset shakespeare-block4   # text: about 20 min on 2 cores\n\n"
             "  vmd train --config my.yaml --set device.precision=bf16\n\n"
             "  vmd train --resume runs/d1 --set train.steps=6000\n\n"
             "  vmd train --preset sudoku-vmd-tiny --set train.init_from=sudoku-mdm\n\n"
             "  vmd train --preset shakespeare-mdm --profile 10   # a trace in RUN/profile\n\n"
             "  python -m vmd_cli.torchrun --standalone --nproc_per_node 8 train --preset text8-block4   # data parallel\n\n"
             "train.batch_size is the global batch: under torchrun each of N processes takes 1/N of it, "
             "with its own data stream; rank 0 writes the run (docs/distributed.md).")
@friendly
def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A bundled preset (an unknown name lists them)."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML config file, applied over the preset."),
    sets: List[str] = typer.Option([], "--set", "-s", help="Override one key, e.g. train.steps=2000 (repeatable)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory \\[default: runs/PRESET]."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint."),
    profile: int = typer.Option(0, "--profile", min=0, metavar="N",
                                help="Record N steps (after 2 of warm-up) with the torch profiler: a Chrome trace and "
                                     "a table of the costliest ops in RUN/profile; training then goes on."),
):
    """Train a model from a preset or config file; checkpoints go to the run directory. Ctrl-C or
    SIGTERM finishes the step, saves and exits (130 / 143); --resume continues bitwise. The
    progress line shows tokens/s and the model's FLOP/s as a share of a plain matmul on the
    device, also written to RUN/metrics.jsonl."""
    from vmd.runtime import runs
    from vmd.train import Trainer

    try:
        if resume is not None:
            if preset or config_file or out_dir:
                fail("--resume continues a run with its saved config; only --set may change it")
            trainer = Trainer.resume(resume, lambda cfg: C.from_dict(C.apply_overrides(C.to_dict(cfg), sets)))
        else:
            if not preset and not config_file:
                fail(f"give --preset NAME or --config FILE; presets: {', '.join(C.list_presets())}")
            cfg = C.load(preset, config_file, sets)
            trainer = Trainer.create(cfg, out_dir or default_out(preset or Path(config_file).stem))
        trainer.profile_steps = profile
        try:  # the run directory is locked from here: released on every way out
            _train(trainer, resume)
        except BaseException:
            trainer.close()
            runs.discard_unsaved(trainer)  # a new run that failed before its first checkpoint leaves nothing
            raise
        finally:
            trainer.close()
    finally:
        leave()


def _train(trainer, resume: Optional[Path]) -> None:
    from vmd.train import TrainingInterrupted
    from vmd_cli.progress import DataProgress, TrainProgress

    run_dir = trainer.run_dir
    if trainer.step >= trainer.cfg.train.steps:
        fail(f"{resume} is complete at step {trainer.step}; raise train.steps with --set to train on")
    procs = f" x {trainer.world.size} processes" if trainer.world.distributed else ""
    err.print(f"run [bold]{run_dir}[/]: {model_label(trainer.cfg, trainer.model)} on {task_label(trainer.cfg)}, "
              f"{trainer.parameters:,} parameters, {trainer.device}{procs}", soft_wrap=True)
    if trainer.device.type == "cpu":  # a preset sized for a GPU: say what it means here before any work
        least = trainer.expected_step_seconds()
        total = least * (trainer.cfg.train.steps - trainer.step)
        if total > 24 * 3600:
            err.print(f"note: on this CPU a step takes at least {least:.1f} s (at its plain matmul rate; expect 2-3x "
                      f"that), {total / 86400:,.0f}+ days for {trainer.cfg.train.steps - trainer.step:,} steps: this "
                      "config is sized for a GPU (device.device=cuda); Ctrl-C stops it", highlight=False, soft_wrap=True)
    with trainer.world.first_on_each_node(), DataProgress(err) as data_progress:  # one process fills a data cache
        trainer.task.prepare(data_progress.update)
    with TrainProgress(err, trainer.step, trainer.cfg.train.steps, trainer.model.has_latent) as progress:
        trainer.callback = progress.update if trainer.world.main else None
        trainer.on_step = progress.step if trainer.world.main else None
        try:
            trainer.run()
        except TrainingInterrupted as e:
            progress.stop()
            err.print(f"{e}; continue with: vmd train --resume {e.run_dir}", soft_wrap=True, highlight=False)
            raise typer.Exit(e.exit_code)
    trace = trainer.profile_trace
    if trace is not None and trace.exists():
        err.print(f"profile of {trainer.profile_steps} steps: {trace} (chrome://tracing or ui.perfetto.dev) and "
                  f"{trace.with_suffix('.txt')}", soft_wrap=True, highlight=False)
    err.print(f"saved [bold]{run_dir}[/] at step {trainer.step}; evaluate with: vmd eval {run_dir}", soft_wrap=True)


@app.command("eval", epilog="Examples:\n\n"
             "  vmd eval runs/synthetic-2tok-vmd --nfe 1\n\n"
             "  vmd eval runs/synthetic-d1-mdm --nfe 4 --json\n\n"
             "  vmd eval runs/sudoku-vmd-tiny --givens 22-26 --samples 200\n\n"
             "  vmd eval runs/sudoku-vmd-tiny --data puzzles.csv --nfe 2,5,10 --strategy top-margin --json\n\n"
             "  vmd eval runs/shakespeare-block4 --split test --max-sequences 200 --json\n\n"
             "  vmd eval runs/shakespeare-block4 --bound-steps 1 --max-sequences 200\n\n"
             "  vmd eval runs/shakespeare-block4 --samples 500 --steps-per-block 1,2,4 --judge runs/shakespeare-ar")
@friendly
def eval_cmd(
    run_dir: str = typer.Argument(..., metavar="MODEL", help=MODEL_HELP),
    nfe: Optional[str] = typer.Option(None, help="Denoiser calls (steps) per sample \\[default: the run's sample.nfe; "
                                      "Sudoku: a list, default 1,2,3,5,10,20,50]. Steps with nothing left to reveal "
                                      "cost nothing, so NFE above the sequence length (a puzzle's blanks) is the same "
                                      "as NFE = length."),
    strategy: Optional[str] = typer.Option(None, help="Which positions to reveal: random, top-prob, top-margin "
                                           "\\[Sudoku: a list, default all three]."),
    data: Optional[str] = typer.Option(None, help="Sudoku: a puzzle file to score on \\[default: a generated test set]. "
                                       "Text: the run's corpus (a file or folder), where it has moved since training."),
    givens: str = typer.Option("30-36", help="Sudoku: the givens range LO-HI of the generated test set."),
    restarts: int = typer.Option(0, help="Sudoku: retry failed puzzles up to K times, with fresh z draws and a perturbed fill order."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature; 0 is argmax."),
    z_policy: Optional[str] = typer.Option(None, "--z-policy", help="VMD latent: once (drawn at the start), step (redrawn every step) or posterior (from the encoder given the last predictions)."),
    samples: Optional[int] = typer.Option(None, help="How many samples to score \\[default: the run's, 50000]."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed (text: the seed of the times and masks)."),
    split: str = typer.Option("test", help="Text: the split to score, valid or test."),
    max_sequences: Optional[int] = typer.Option(None, "--max-sequences", help="Text: score only the first N "
                                                "sequences of the split (bounds the time) \\[default: all]."),
    draws: int = typer.Option(4, help="Text: draws of the times and masks per sequence."),
    bound_steps: Optional[int] = typer.Option(None, "--bound-steps", help="Text: score the bound of the sampler "
                                              "that fills each block (a one-block model: the sequence) in K steps, "
                                              "random order, beside the continuous NELBO."),
    batch_size: int = typer.Option(32, "--batch-size", help="Text: sequences per batch."),
    steps_per_block: Optional[str] = typer.Option(None, "--steps-per-block", "-k", help="Text: score samples instead "
                                                  "(gen-PPL, word validity, entropy) made with these steps per block, "
                                                  "e.g. 1,2,4 \\[default with --samples: 1,2,4]."),
    judge: Optional[str] = typer.Option(None, help="Text samples: the autoregressive model of gen-PPL \\[default: the "
                                        "bundled shakespeare-ar, where the vocabulary matches]."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps \\[default: the run's]."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
):
    """Score a trained model: the task's metrics over many samples, and the latent's KL and active
    dimensions; for text, the test split's bits per character (NELBO) and its standard error."""
    from vmd.evaluate import evaluate

    if device is not None:
        C.from_dict({"device": {"device": device}})
    if samples is not None and samples < 1:
        fail(f"--samples must be >= 1, got {samples}")
    if seed is not None and seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    model, cfg, step, dev, task = load_any(run_dir, device, with_task=True)
    check_z_policy(cfg, model, z_policy)
    text = hasattr(task, "eval_sequences")
    inapplicable = {"--nfe": nfe, "--givens": None if givens == "30-36" else givens,
                    "--restarts": restarts or None} if text else {"--bound-steps": bound_steps,
                    "--steps-per-block": steps_per_block, "--judge": judge, "--max-sequences": max_sequences,
                    "--split": None if split == "test" else split}
    given = [k for k, v in inapplicable.items() if v is not None]
    if given:
        fail(f"{', '.join(given)} {'do' if len(given) > 1 else 'does'} not apply to {task_label(cfg)} models")
    if text and samples is None and steps_per_block is None:  # the bound: no sampler involved
        drawn = [k for k, v in {"--temperature": temperature, "--strategy": strategy, "--z-policy": z_policy}.items()
                 if v is not None]
        if drawn:
            fail(f"{', '.join(drawn)} set how samples are drawn: {'they apply' if len(drawn) > 1 else 'it applies'} "
                 "with --samples or --steps-per-block, not to the test split's bound")
    if text and data is not None:  # the corpus has moved: the same vocabulary, read from there
        import dataclasses

        from vmd.tasks import make_task

        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, file=data))
        task = make_task(cfg.task, task.state())
    if text and bound_steps is not None and (samples is not None or steps_per_block is not None):
        fail("--bound-steps scores the test split; --samples and --steps-per-block score samples: give one or the other")
    if text and (samples is not None or steps_per_block is not None):
        from vmd_cli.textgen import eval_quality

        sc = sample_config(cfg, strategy=strategy, temperature=temperature, z_policy=z_policy, seed=seed)
        return eval_quality(model, cfg, step, dev, task, run_dir, samples=samples or 200,
                            steps_list=parse_ints(steps_per_block, "--steps-per-block"), judge_source=judge, sc=sc,
                            batch_size=batch_size, as_json=as_json)
    if text:
        from vmd_cli.likelihood import eval_likelihood

        return eval_likelihood(model, cfg, step, dev, task, run_dir, split=split, max_sequences=max_sequences,
                               draws=draws, seed=seed, batch_size=batch_size, as_json=as_json, bound_steps=bound_steps)
    if cfg.task.name == "sudoku":
        from vmd_cli.sudoku import eval_sudoku

        return eval_sudoku(model, cfg, step, dev, run_dir, nfe=nfe, strategy=strategy, data=data, givens=givens,
                           restarts=restarts, samples=samples, seed=seed, as_json=as_json,
                           z_policy=sample_config(cfg, z_policy=z_policy).z_policy)
    nfe_value = parse_ints(nfe, "--nfe")
    if nfe_value is not None and len(nfe_value) != 1:
        fail("--nfe takes one value for this task")
    sc = sample_config(cfg, nfe=nfe_value[0] if nfe_value else None, strategy=strategy, temperature=temperature,
                        z_policy=z_policy, num_samples=samples, seed=seed)
    metrics = evaluate(model, task, cfg, sc, dev)
    metrics = {"method": cfg.method, "step": step, "nfe": sc.nfe, "strategy": sc.strategy,
               "temperature": sc.temperature, "z_policy": sc.z_policy, **metrics}
    show_metrics(metrics, f"{cfg.method.upper()} {task_label(cfg)}, step {step}", str(run_dir), as_json)


@app.command(epilog="Examples:\n\n"
             "  vmd sample                                   # the bundled text model, streamed\n\n"
             "  vmd sample runs/shakespeare-block4 --prompt 'ROMEO:' --length 512 --steps-per-block 1\n\n"
             "  vmd sample shakespeare-bd3-block4 -n 16 --format json > samples.jsonl\n\n"
             "  vmd sample runs/synthetic-2tok-vmd -n 8 --nfe 1")
@friendly
def sample(
    run_dir: Optional[str] = typer.Argument(None, metavar="[MODEL]", help=MODEL_HELP.rstrip(".") +
                                            " \\[default: the bundled text model, shakespeare-block4]."),
    n: Optional[int] = typer.Option(None, "-n", "--num", help="How many samples \\[default: 8; text: 1]."),
    nfe: Optional[int] = typer.Option(None, help="Not text: denoiser calls (steps) per sample \\[default: the run's]. "
                                      "Steps with nothing left to reveal cost nothing, so NFE above the sequence length "
                                      "is the same as NFE = length."),
    steps_per_block: Optional[int] = typer.Option(None, "--steps-per-block", "-k", help=STEPS_PER_BLOCK_HELP),
    length: Optional[int] = typer.Option(None, help=LENGTH_HELP),
    prompt: Optional[str] = typer.Option(None, help="Text: the start of every sample, kept verbatim."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="Text: read the prompt from a file (- for stdin)."),
    strategy: Optional[str] = typer.Option(None, help="random, top-prob or top-margin."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature; 0 is argmax."),
    z_policy: Optional[str] = typer.Option(None, "--z-policy", help="once, step or posterior."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed (text: sample i draws the same whatever -n and "
                                       "--batch-size)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Text: samples made at once."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Text: recompute the prefix at every step instead of "
                                  "caching it (the reference; same text, slower)."),
    fmt: str = typer.Option("text", "--format", help="Text: text, or json (one object per sample with its settings)."),
    as_json: bool = typer.Option(False, "--json", help="JSON: token lists (text: as --format json)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps \\[default: the run's]."),
):
    """Draw samples from a trained model and print them. Text is made block by block (each block's
    clean prefix in a KV cache) and shown as each block is committed."""
    from vmd.evaluate import draw_samples
    from vmd_cli.textgen import DEFAULT_TEXT_MODEL

    if device is not None:
        C.from_dict({"device": {"device": device}})
    if fmt not in ("text", "json"):
        fail(f"--format must be text or json, got {fmt!r}")
    source = run_dir or DEFAULT_TEXT_MODEL
    model, cfg, _, dev, task = load_any(source, device, with_task=True)
    check_z_policy(cfg, model, z_policy)
    if hasattr(task, "encode_prompt"):  # text
        from vmd_cli.textgen import read_prompt, sample_text

        if nfe is not None:
            fail("--nfe is for one-pass models; a text model takes --steps-per-block")
        sc = sample_config(cfg, strategy=strategy, temperature=temperature, z_policy=z_policy, seed=seed)
        return sample_text(model, cfg, task, source, dev, n=1 if n is None else n, length=length, steps=steps_per_block,
                           prompt=read_prompt(prompt, prompt_file), sc=sc, batch_size=batch_size, cache=not no_cache,
                           fmt="json" if as_json else fmt)
    text_only = {"--steps-per-block": steps_per_block, "--length": length, "--prompt": prompt,
                 "--prompt-file": prompt_file, "--no-cache": no_cache or None,
                 "--format": None if fmt == "text" else fmt}
    given = [k for k, v in text_only.items() if v is not None]
    if given:
        fail(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to text models; {source} is a "
             f"{task_label(cfg)} model")
    n = 8 if n is None else n
    sc = sample_config(cfg, nfe=nfe, strategy=strategy, temperature=temperature, z_policy=z_policy,
                       num_samples=n, batch_size=max(1, n), seed=seed)
    x = draw_samples(model, task, sc, cfg.diffusion.schedule, dev)
    if as_json:
        print(json.dumps(x.tolist()))
        return
    for line in task.format(x):
        out.print(line, highlight=False, soft_wrap=True)


from vmd_cli import play, plot, sudoku  # noqa: E402,F401  (here: vmd --help lists train, eval, sample first)

# Click's base error, whichever click this typer runs on (newer typers vendor their own)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """The ``vmd`` command. Click runs outside its standalone mode, so that its usage errors print as
    one ``error:`` line like every other error (not a framed box), and Ctrl-C says so."""
    keep_freed_memory()  # this process is the application: see vmd/runtime/allocator.py
    signal.signal(signal.SIGTERM, terminate)
    try:
        code = app(standalone_mode=False, prog_name="vmd")
    except _USAGE_ERROR as e:
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `vmd`: the help, as --help shows it
            print(ctx.get_help() if ctx else e.format_message())
        else:
            print_error(e.format_message() + (f" (see '{ctx.command_path} --help')" if ctx else ""))
        code = e.exit_code
    except typer.Abort:
        err.print("interrupted")
        code = 130
    except KeyboardInterrupt as e:
        err.print("terminated" if isinstance(e, Terminated) else "interrupted")
        code = 143 if isinstance(e, Terminated) else 130
    # said and done: a SIGTERM from here on (a launcher stopping the ranks after this one's error)
    # ends the process as SIGTERM does, not as a traceback out of an exit handler
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
