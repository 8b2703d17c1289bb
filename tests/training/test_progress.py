"""The progress bar's rate and ETA leave out the first (compiling) step."""

import io
import re

from tqdm import tqdm

from dsv4.training.progress import progress


def _run(bar, clock, step_times):
  bar._time = lambda: clock[0]
  bar.start_t = bar.last_print_t = clock[0]
  for t in step_times:
    clock[0] = t
    bar.update(1)
  return bar.format_dict


def test_rate_excludes_the_compiling_step():
  # Step 1 ends at t=16 (compile); then one step per second.
  times = [16.0] + [16.0 + k for k in range(1, 6)]
  bar = progress(20, desc="t", enabled=True)
  bar.fp, bar.mininterval = io.StringIO(), 0
  ours = _run(bar, [0.0], times)
  plain = tqdm(total=20, file=io.StringIO(), mininterval=0, smoothing=0.1)
  theirs = _run(plain, [0.0], times)
  assert abs(ours["rate"] - 1.0) < 1e-6, ours
  assert ours["elapsed"] == 5.0
  # A plain bar folds the 16 s compile into its rate: ETA far too long. This is what the subclass fixes.
  assert theirs["rate"] < 0.5


def test_disabled_bar_counts_nothing():
  bar = progress(3, desc="t", enabled=False)
  bar.update(1)
  assert bar.n == 0


def test_no_frame_shows_a_rate_or_eta_that_counts_the_compiling_step(capsys):
  """Every frame drawn once the compiling step is done says the rate is not known yet ('?') until a compiled step
  finishes; a plain bar draws '1/20 [00:16<05:04, 16.00s/step]' there, an ETA that is 5 minutes too long."""
  times = [16.0] + [16.0 + k for k in range(1, 6)]
  bar = progress(20, desc="t", enabled=True)  # draws on sys.stderr, captured
  bar.mininterval = 0
  _run(bar, [0.0], times)
  frames = re.findall(r"\d+/20 \[[^\]]*\]", capsys.readouterr().err)
  first = [f for f in frames if f.startswith("1/20")]
  assert first and all("<?" in f and "?step/s" in f for f in first), first
  assert all("16.00s/step" not in f for f in frames), frames
  assert "1.00s/step" in frames[-1] or "1.00step/s" in frames[-1], frames[-1]


def test_a_piped_log_gets_a_frame_per_10_s_even_with_a_postfix_every_step(capsys):
  """The training loops set the loss on the bar after every step; in a log file (stderr not a terminal) that must
  not draw a line per step: 100 steps of 0.5 s make 50 s, so about 5 frames, not 100."""
  bar = progress(100, desc="t", enabled=True)
  clock = [0.0]
  bar._time = lambda: clock[0]
  bar.start_t = bar.last_print_t = 0.0
  for k in range(1, 101):
    clock[0] = 16.0 + 0.5 * k
    bar.update(1)
    bar.set_postfix(loss=f"{1 / k:.3f}")
  bar.close()
  frames = re.findall(r"\d+/100 \[[^\]]*\]", capsys.readouterr().err)
  assert len(frames) <= 10, frames
  assert frames[-1].startswith("100/100") and "loss=0.010" in frames[-1], frames[-1]
