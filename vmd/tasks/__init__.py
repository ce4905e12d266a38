"""Tasks: the only place that knows a domain (vocabulary, given positions, data, metrics).

A task has ``vocab`` (clean token ids 0..vocab-1; id ``vocab`` is [MASK]), ``length``,
``train_batch(n, generator) -> (x0, given)``, ``start(n) -> (x, given)`` (what generation
starts from; ``given`` marks positions that never change, or is None), ``metrics(samples)``
and ``format(x)``; ``layout`` (None, or a (length, F) position structure for the model) and
``prepare(progress)`` (make or load training data before the first batch, calling
``progress(done, total, label)`` with a label that says what is made and where it goes, or
which cached file is used). Training, sampling and the CLI stay domain-free: the CLI prints
whatever label a task gives.

``state() -> dict[str, str]`` is what the task learned from its data when a run was made (text:
its vocabulary or tokenizer; {} for the tasks that learn nothing): stored with the run and
passed back as ``make_task(cfg, state)``, it rebuilds the same task without the data, so a run
loads, formats and samples offline. Tasks with held-out data (text) also have
``eval_sequences(split, max_sequences) -> (n, length)`` for ``split`` valid or test, and
``encode_prompt(text) -> (n,)`` ids, the start of a sample (generated block by block).
"""

from __future__ import annotations

from vmd.config import TaskConfig


def make_task(cfg: TaskConfig, state: dict[str, str] | None = None):
    """The task of ``cfg``; ``state`` is a run's stored ``task.state()`` (None or {} for a new run)."""
    if cfg.name == "synthetic":
        from vmd.tasks.synthetic import SyntheticTask

        return SyntheticTask(cfg)
    if cfg.name == "sudoku":
        from vmd.tasks.sudoku import SudokuTask

        return SudokuTask(cfg)
    if cfg.name == "text":
        from vmd.tasks.text import TextTask

        return TextTask(cfg, state)
    raise ValueError(f"unknown task {cfg.name!r}")
