"""How far along a run is: a log line every few seconds and, on a terminal, a progress bar.

The log line (absl INFO, so it also lands in log files) gives the step, the epoch, steps/s
and examples/s over the last period, and the time left at that rate; from configs/mlp.py:

    progress: step 1800/11000 (16.4%), epoch 3.27/20, 119.5 steps/s, 11948 examples/s, 1 min 17 s left

clu's `periodic_actions.ReportProgress` reports steps/s and an ETA but not examples/s or
epochs, and draws no bar, hence this small class.
"""

import contextlib
import sys
import time

from absl import logging


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes} min {seconds} s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes} min"


class Progress:
  """Call `update(step)` after each step; it reports at most every `every_seconds`.

  Attributes:
    total_steps: the step the run ends at.
    steps_per_epoch, batch_size: to report epochs and examples/s.
    every_seconds: the period of the log line (0 turns it off).
    stream: where the bar goes.
    draw_bar: None draws it when `stream` is a terminal.
  """

  _BAR_WIDTH = 30
  _BAR_PERIOD_SECONDS = 0.2

  def __init__(self, *, total_steps: int, steps_per_epoch: int, batch_size: int,
               every_seconds: float, start_step: int = 0, stream=None,
               draw_bar: bool | None = None, clock=time.monotonic):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self.every_seconds = every_seconds
    self.stream = sys.stderr if stream is None else stream
    self._clock = clock
    self._last_time = self._bar_time = clock()
    self._last_step = start_step
    self._excluded_seconds = 0.0  # Of the current period, not spent training.
    self._rate = None  # steps/s over the last period
    isatty = getattr(self.stream, "isatty", None)
    self._draw_bar = bool(isatty and isatty()) if draw_bar is None else draw_bar

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (e.g. an evaluation) out of the rate; lines still come on time."""
    self._excluded_seconds += seconds

  def update(self, step: int) -> None:
    now = self._clock()
    elapsed = now - self._last_time
    if self.every_seconds and elapsed >= self.every_seconds and step > self._last_step:
      self._rate = (step - self._last_step) / max(elapsed - self._excluded_seconds, 1e-9)
      self._last_time, self._last_step, self._excluded_seconds = now, step, 0.0
      logging.info("progress: %s", self.describe(step))
    if self._draw_bar and (now - self._bar_time >= self._BAR_PERIOD_SECONDS
                           or step == self.total_steps):
      self._bar_time = now
      done = int(self._BAR_WIDTH * step / max(self.total_steps, 1))
      self.stream.write(f"\r[{'#' * done}{'.' * (self._BAR_WIDTH - done)}] "
                        f"{self.describe(step)}\x1b[K")
      if step == self.total_steps:
        self.stream.write("\n")
      self.stream.flush()

  def describe(self, step: int) -> str:
    parts = [f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.1f}%)",
             f"epoch {step / self.steps_per_epoch:.2f}/"
             f"{self.total_steps / self.steps_per_epoch:g}"]
    if self._rate:
      parts += [f"{self._rate:.1f} steps/s", f"{self._rate * self.batch_size:.0f} examples/s",
                f"{format_seconds((self.total_steps - step) / self._rate)} left"]
    return ", ".join(parts)


class PhaseTimer:
  """Wall time by phase of a run (data, compile, the evaluation at epoch ends and at the
  end, figures, checkpoints; the rest of the loop is training), logged and written to
  workdir/timings.json at the end.

      with timer.phase("epoch_eval"):
        ...
  """
  PHASES = ("imports", "data", "compile", "train", "epoch_eval", "final_eval", "figures",
            "checkpoints")

  def __init__(self, imports_seconds: float | None = None):
    self._start = time.perf_counter()
    self.seconds = {phase: 0.0 for phase in self.PHASES}
    self.seconds["imports"] = imports_seconds or 0.0
    self._open = None

  @contextlib.contextmanager
  def phase(self, name: str):
    outer, self._open = self._open, name
    start = time.perf_counter()
    try:
      yield
    finally:
      elapsed = time.perf_counter() - start
      self.seconds[name] += elapsed
      if outer is not None:  # A nested phase is not counted twice.
        self.seconds[outer] -= elapsed
      self._open = outer

  def finish(self) -> dict[str, float]:
    """The seconds by phase; 'train' is the time not in any other phase since the start."""
    elapsed = time.perf_counter() - self._start
    others = sum(v for k, v in self.seconds.items() if k not in ("imports", "train"))
    self.seconds["train"] = elapsed - others
    self.seconds["total"] = elapsed + self.seconds["imports"]
    return dict(self.seconds)

  @staticmethod
  def format(seconds: dict[str, float]) -> str:
    parts = [f"{phase} {seconds[phase]:.1f} s" for phase in PhaseTimer.PHASES
             if seconds.get(phase)]
    return f"time by phase: {', '.join(parts)}; total {format_seconds(seconds['total'])}"
