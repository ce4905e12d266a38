"""Run plumbing: what a training or sampling run needs around the math.

Run directories and their lock (``runs``, ``runlock``), files written whole or not at all
(``atomic``), checked caches (``cache``), the metrics log (``history``), stopping on signals
(``stopping``), devices and precision (``devices``), torchrun's process group (``distributed``),
the CPU allocator (``allocator``) and the one-line errors every layer raises (``errors``).
"""
