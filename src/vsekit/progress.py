"""A dependency-free progress bar with throughput and ETA.

On a terminal it redraws one line; elsewhere (CI logs, files) it prints a line every ``log_every`` seconds,
so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``3725`` -> ``'1:02:05'``; ``65`` -> ``'1:05'``."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress over ``total`` items.

    Args:
        total: number of items expected (the ETA uses it).
        desc: a label printed first.
        unit: the item name in the rate (``items/s``).
        stream: where to write (default stderr); ``None`` disables output.
        log_every: seconds between lines when the stream is not a terminal.

    Example:
        >>> bar = Progress(100, "epoch 1", unit="pairs", stream=None)
        >>> bar.update(10, loss=0.5)
        >>> bar.close()
    """

    def __init__(
        self, total: int, desc: str = "", unit: str = "items", stream: TextIO | None = sys.stderr, log_every: float = 10.0
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream
        self.log_every = log_every
        self.count = 0
        self.postfix: dict[str, float | str] = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    @property
    def rate(self) -> float:
        """Items per second so far."""
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The current status line."""
        elapsed = time.perf_counter() - self.start
        rate = self.rate
        pct = 100.0 * self.count / self.total if self.total else 100.0
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        eta_s = format_seconds(eta) if eta == eta else "?"
        extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items())
        width = 20
        filled = int(width * min(1.0, self.count / self.total)) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (
            f"{self.desc} [{bar}] {pct:5.1f}% {self.count}/{self.total} {self.unit} "
            f"| {rate:,.0f} {self.unit}/s | {format_seconds(elapsed)} elapsed, ETA {eta_s}" + (f" | {extras}" if extras else "")
        )

    def update(self, n: int = 1, **postfix: float | str) -> None:
        """Advance by ``n`` items and set extra fields to show (e.g. ``loss=...``)."""
        self.count += n
        self.postfix.update(postfix)
        if self.stream is None:
            return
        now = time.perf_counter()
        interval = 0.2 if self._tty else self.log_every
        if now - self._last_draw >= interval:
            self._draw()
            self._last_draw = now

    def _draw(self, final: bool = False) -> None:
        assert self.stream is not None
        if self._tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final line."""
        if self.stream is not None:
            self._draw(final=True)
