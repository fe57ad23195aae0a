"""Progress lines with an estimate of time left, for tfsafe's long stages (no TensorFlow).

:class:`Progress` prints numbered stage lines (``[2/6] training ... done in 4.1s``);
:class:`ProgressBar` is a Keras-style bar over the units of one long stage (models audited,
attacks run, candidates scored) with the elapsed time and an estimate of the time left from the
mean time per unit so far::

    audit  2/3 [====================>..........] 12s, ETA 6s

The bar redraws in place on a terminal and prints one line per update elsewhere (logs, CI).

Example:
    >>> lines = []
    >>> bar = ProgressBar(2, "audit", log=lines.append)
    >>> bar.update(); bar.update()
    >>> lines[-1].startswith("audit  2/2")
    True
"""

import sys
import time

__all__ = ["Progress", "ProgressBar", "format_seconds"]


def format_seconds(seconds):
    """``75.0`` -> ``"1m15s"``; ``4.2`` -> ``"4.2s"``."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Prints numbered steps with their duration, so a long run shows where it is.

    Args:
        total: number of steps.
        log: where lines go (``print`` by default).
    """

    def __init__(self, total, log=print):
        self.total, self.log, self.step, self._start = total, log, 0, None

    def __call__(self, message):
        self.done()
        self.step += 1
        self._start = time.perf_counter()
        self.log(f"[{self.step}/{self.total}] {message} ...")

    def done(self):
        if self._start is not None:
            self.log(f"      done in {format_seconds(time.perf_counter() - self._start)}")
            self._start = None


class ProgressBar:
    """A Keras-style bar over ``total`` units with elapsed time and an estimate of time left.

    Args:
        total: number of units.
        label: what is counted.
        log: a line sink (each update one line); default: redraw on stdout when it is a terminal,
            else print one line per update.
        width: bar characters.
    """

    def __init__(self, total, label="", log=None, width=30):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.done_units, self.start = 0, time.perf_counter()
        self._log = log
        self._inline = log is None and getattr(sys.stdout, "isatty", lambda: False)()

    def eta(self):
        """Seconds left at the mean pace so far (None before the first unit)."""
        if not self.done_units:
            return None
        elapsed = time.perf_counter() - self.start
        return elapsed / self.done_units * (self.total - self.done_units)

    def line(self):
        filled = int(self.width * self.done_units / self.total)
        arrow = ">" if filled < self.width else ""
        bar = "=" * filled + arrow + "." * (self.width - filled - len(arrow))
        digits = len(str(self.total))
        text = f"{self.label}  {self.done_units:>{digits}}/{self.total} [{bar}] " \
               f"{format_seconds(time.perf_counter() - self.start)}"
        eta = self.eta()
        if eta is not None and self.done_units < self.total:
            text += f", ETA {format_seconds(eta)}"
        return text

    def update(self, units=1):
        """Count ``units`` more as done and show the bar."""
        self.done_units = min(self.total, self.done_units + units)
        if self._inline:
            end = "\n" if self.done_units >= self.total else ""
            sys.stdout.write("\r" + self.line() + end)
            sys.stdout.flush()
        else:
            (self._log or print)(self.line())
