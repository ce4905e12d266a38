"""Tasks: the only place that knows a domain (vocabulary, given positions, data, metrics).

A task has ``vocab`` (clean token ids 0..vocab-1; id ``vocab`` is [MASK]), ``length``,
``train_batch(n, generator) -> (x0, given)``, ``start(n) -> (x, given)`` (what generation
starts from; ``given`` marks positions that never change, or is None), ``metrics(samples)``
and ``format(x)``; ``layout`` (None, or a (length, F) position structure for the model) and
``prepare(progress)`` (make or load training data before the first batch, calling
``progress(done, total, label)`` with a label that says what is made and where it goes, or
which cached file is used). Training, sampling and the CLI stay domain-free: the CLI prints
whatever label a task gives.
"""

from __future__ import annotations

from vmd.config import TaskConfig


def make_task(cfg: TaskConfig):
    if cfg.name == "synthetic":
        from vmd.tasks.synthetic import SyntheticTask

        return SyntheticTask(cfg)
    if cfg.name == "sudoku":
        from vmd.tasks.sudoku import SudokuTask

        return SudokuTask(cfg)
    raise ValueError(f"unknown task {cfg.name!r}")
