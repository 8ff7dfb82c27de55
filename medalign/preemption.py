"""SIGTERM and SIGUSR1 (what SLURM sends before a time limit) as a request to stop at the next safe point.

Torch-free: the training loop checks it after every optimizer step (checkpoint, then Preempted),
`medalign run` between steps, so that a stage without a training loop (evaluate) finishes its
output instead of being killed by SIGUSR1's default action, and the run still exits 75.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class requested:
    """`with requested() as stop:` ... `stop.signal` is the name of the first signal that came, or None."""

    def __enter__(self):
        self.signal, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.signal = self.signal or signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
