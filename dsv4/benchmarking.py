"""The timing harness every benchmark script uses, and the writer of their generated results.md files.

A benchmark compares variants (dsv4 against a peer, one expert path against another, AR against speculative).
On a shared machine, load comes and goes while it runs, so:

- the variants are timed **interleaved**, A, B, A, B, …, ≥ 5 repetitions each after a warm-up, so a load
  change hits all of them alike, and repetition i of A and of B form a *pair* measured side by side;
- every figure is a median with its **spread** (min–max and interquartile range over the repetitions);
- a ratio is the ratio of the medians, and its spread is that of the per-pair ratios A_i / B_i;
- a difference (per-token time = (T_long − T_short) / (N − 1)) is taken per repetition; a difference that is
  ≤ 0 in any repetition is **impossible** and refused (`Refused`), never printed as a figure;
- an effect is only claimed when it is outside the noise: `require_effect` refuses a ratio whose per-pair range
  includes 1 (B faster than A by less than the repetitions disagree with each other). Every pair must agree on
  the direction: a sign test, p = 2^(1−n) two-sided for n pairs (0.06 at 5, 0.016 at 7);
- the machine's load average (`os.getloadavg`) is recorded at start and end; `time_interleaved` refuses to start
  (or warns) when the 1-minute load is above `high_load()` (¾ of this process's cores).

Peers (torch) get the same thread budget as JAX (`thread_budget`, `torch_threads`) and run while JAX is idle:
every variant returns only when its work is done (`sync` blocks on JAX's asynchronous results), and the
variants run one at a time. Where the two runtimes' thread pools still interfere (spinning workers), a peer runs
in its own process (`ProcessVariant`), timed there.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_REPEATS = 5


class Refused(ValueError):
  """A result that must not be printed as a figure: impossible (a negative time) or inside the noise. `short` is
  the reason in a few words, for a table cell."""

  def __init__(self, message: str, short: str = "refused"):
    super().__init__(message)
    self.short = short


# --- statistics --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
  """A figure with its spread over the repetitions: `value` (a median, or a ratio of medians), min–max
  (`lo`, `hi`) and interquartile range (`q1`, `q3`) of the per-repetition samples it came from."""
  value: float
  lo: float
  hi: float
  q1: float
  q3: float
  n: int

  def scaled(self, factor: float) -> Estimate:
    if not factor > 0:
      raise ValueError(f"Estimate.scaled: factor must be > 0, got {factor}.")
    return Estimate(*(factor * v for v in (self.value, self.lo, self.hi, self.q1, self.q3)), self.n)

  def fmt(self, spec: str = ".3g", suffix: str = "") -> str:
    """'1.23× (1.20–1.31, IQR 1.21–1.25)': the figure, its min–max, its interquartile range."""
    f = lambda v: f"{v:{spec}}{suffix}"  # noqa: E731
    return f"{f(self.value)} ({f(self.lo)}–{f(self.hi)}, IQR {f(self.q1)}–{f(self.q3)})"

  def to_dict(self, digits: int = 4) -> dict:
    r = lambda v: float(f"{v:.{digits}g}")  # noqa: E731
    return {"median": r(self.value), "min": r(self.lo), "max": r(self.hi), "q1": r(self.q1), "q3": r(self.q3),
            "n": self.n}


def _samples(x, what: str) -> np.ndarray:
  a = np.asarray(x, np.float64).reshape(-1)
  if a.size == 0 or not np.all(np.isfinite(a)):
    raise ValueError(f"{what}: needs a non-empty list of finite timings, got {x!r}.")
  return a


def estimate(samples, what: str = "timings") -> Estimate:
  """Median and spread of per-repetition samples."""
  a = _samples(samples, what)
  q1, med, q3 = np.quantile(a, (0.25, 0.5, 0.75))
  return Estimate(float(med), float(a.min()), float(a.max()), float(q1), float(q3), int(a.size))


def _positive(a: np.ndarray, what: str) -> None:
  if np.any(a <= 0):
    raise Refused(f"{what}: a time ≤ 0 ({a.min():.4g}) is impossible; not reported. Too few repetitions, or the "
                  "machine's load changed during the run: rerun on a calm machine or with more work per call.",
                  "impossible: a time ≤ 0")


def ratio(num, den, what: str = "ratio") -> Estimate:
  """median(num) / median(den), with the spread of the per-pair ratios num_i / den_i (pairs measured side by
  side). Refused if any time is ≤ 0."""
  a, b = _samples(num, what), _samples(den, what)
  if a.shape != b.shape:
    raise ValueError(f"{what}: per-pair ratios need as many numerator as denominator repetitions, got "
                     f"{a.size} and {b.size}.")
  _positive(a, what)
  _positive(b, what)
  per_pair = estimate(a / b, what)
  return Estimate(float(np.median(a) / np.median(b)), per_pair.lo, per_pair.hi, per_pair.q1, per_pair.q3, a.size)


def difference(long, short, scale: float = 1.0, what: str = "difference") -> Estimate:
  """(long_i − short_i) · scale per repetition, median and spread. Refused when any repetition's difference is
  ≤ 0: the longer run took no longer, so the difference measures noise, not work (e.g. a per-token time from
  (T_64 − T_1) / 63 that comes out negative)."""
  a, b = _samples(long, what), _samples(short, what)
  if a.shape != b.shape:
    raise ValueError(f"{what}: needs as many long as short repetitions, got {a.size} and {b.size}.")
  d = (a - b) * scale
  if np.any(d <= 0):
    bad = int(np.sum(d <= 0))
    raise Refused(f"{what}: the longer run was not longer in {bad} of {d.size} repetitions "
                  f"(differences {', '.join(f'{v:.3g}' for v in d)}); a difference ≤ 0 is impossible, so it is "
                  "not reported. The machine's load changed during the run, or the work is too small to time.",
                  f"impossible: ≤ 0 in {bad} of {d.size} repetitions")
  return estimate(d, what)


def require_effect(est: Estimate, what: str = "ratio") -> Estimate:
  """`est` if its per-pair range excludes 1 (a speedup, or a slowdown, beyond the noise); otherwise Refused."""
  if est.lo <= 1.0 <= est.hi:
    raise Refused(f"{what}: inside the noise: the per-pair ratios range {est.lo:.3g}–{est.hi:.3g}, which includes "
                  "1, so no effect is reported. Rerun on a calm machine or with more repetitions.",
                  "inside the noise: per-pair range includes 1")
  return est


def ratio_or_refusal(num, den, what: str = "ratio") -> tuple[Estimate | None, Refused | None]:
  """(Estimate, None) for an effect beyond the noise, else (None, the refusal): for tables that print either."""
  try:
    return require_effect(ratio(num, den, what), what), None
  except Refused as e:
    return None, e


# --- load and thread budget ----------------------------------------------------------------------------------
def thread_budget() -> int:
  """The cores this process may run on, which XLA's CPU thread pool uses: the budget a peer gets too."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def high_load() -> float:
  """The 1-minute load average above which a timing is not trusted: ¾ of the cores (1.5 on 2 cores)."""
  return 0.75 * thread_budget()


class torch_threads:
  """Context manager: torch runs with `n` intra-op threads (default: JAX's `thread_budget()`), restored after."""

  def __init__(self, n: int | None = None):
    self.n = n or thread_budget()

  def __enter__(self):
    import torch
    self._old = torch.get_num_threads()
    torch.set_num_threads(self.n)
    return self

  def __exit__(self, *exc):
    import torch
    torch.set_num_threads(self._old)


# --- timing ----------------------------------------------------------------------------------------------------
def block(out):
  """Waits for JAX's asynchronous results in `out` (any pytree; other leaves pass through)."""
  if "jax" in sys.modules:
    import jax
    jax.block_until_ready(out)
  return out


@dataclass
class Timings:
  """Seconds per repetition of each variant, in the order they ran, and the machine's load around them."""
  samples: dict[str, np.ndarray]
  order: list[str]
  load_start: tuple[float, float, float]
  load_end: tuple[float, float, float]
  threads: int
  warmup: int

  def estimate(self, name: str) -> Estimate:
    return estimate(self._get(name), name)

  def ratio(self, num: str, den: str) -> Estimate:
    """median(num) / median(den) with the spread of per-pair ratios (so `ratio(slow, fast)` is fast's speedup)."""
    return ratio(self._get(num), self._get(den), f"{num} / {den}")

  def speedup(self, base: str, new: str) -> Estimate:
    """base time / new time, refused inside the noise (`require_effect`) or for impossible times."""
    return require_effect(self.ratio(base, new), f"speedup of {new} over {base}")

  def difference(self, long: str, short: str, scale: float = 1.0, what: str | None = None) -> np.ndarray | Refused:
    """Per-repetition (long − short) · scale, or the Refused (returned, not raised, so a table prints its reason)
    when any is ≤ 0; samples so that derived times pair again (`ratio_figure(d_peer, d_ours)`)."""
    try:
      difference(self._get(long), self._get(short), scale, what or f"({long} − {short})")
    except Refused as e:
      return e
    return (self._get(long) - self._get(short)) * scale

  def load_line(self) -> str:
    return (f"Load average (1/5/15 min) {'/'.join(f'{v:.2f}' for v in self.load_start)} at start, "
            f"{'/'.join(f'{v:.2f}' for v in self.load_end)} at end; {self.threads} cores; "
            f"{len(self.order) // max(len(self.samples), 1)} interleaved repetitions after {self.warmup} warm-up.")

  def to_dict(self, digits: int = 4) -> dict:
    return {"seconds": {k: self.estimate(k).to_dict(digits) for k in self.samples},
            "load_start": [round(v, 2) for v in self.load_start], "load_end": [round(v, 2) for v in self.load_end],
            "threads": self.threads, "repeats": len(self.order) // max(len(self.samples), 1)}

  def _get(self, name: str) -> np.ndarray:
    if name not in self.samples:
      raise KeyError(f"no variant {name!r} was timed; timed: {sorted(self.samples)}")
    return self.samples[name]


def check_load(on_high_load: str = "refuse", limit: float | None = None) -> tuple[float, float, float]:
  """The load average now; refuses (Refused) or warns when its 1-minute figure is above `limit`
  (default `high_load()`). on_high_load: "refuse", "warn" or "ignore"."""
  if on_high_load not in ("refuse", "warn", "ignore"):
    raise ValueError(f"on_high_load must be 'refuse', 'warn' or 'ignore', got {on_high_load!r}.")
  load = os.getloadavg()
  limit = high_load() if limit is None else limit
  if load[0] > limit and on_high_load != "ignore":
    msg = (f"the machine is busy: 1-minute load average {load[0]:.2f} > {limit:.2f} (¾ of {thread_budget()} "
           "cores); timings taken now measure the other work as much as this one.")
    if on_high_load == "refuse":
      raise Refused(msg + " Wait for a calm machine, or pass on_high_load='warn' (scripts: --allow_load) to time "
                    "anyway with the load recorded.")
    warnings.warn(msg, stacklevel=3)
  return load


def time_interleaved(variants: Mapping[str, Callable[[], object]], repeats: int = MIN_REPEATS, warmup: int = 1,
                     sync: Callable[[object], object] = block, on_high_load: str = "refuse",
                     load_limit: float | None = None, clock: Callable[[], float] = time.perf_counter,
                     log: Callable[[str], None] | None = None, settle_s: float = 0.0) -> Timings:
  """Times each variant `repeats` times, interleaved A, B, A, B, … after `warmup` untimed calls of each (which
  compile). A variant is a no-argument callable whose result `sync` waits for; a `ProcessVariant` (or any object
  with `timed_call() -> seconds`) times itself.

  `settle_s` > 0 (unless on_high_load is "ignore") waits, after the warm-up and for at most that long, until
  the 1-minute load average is back under the limit: the compiles just run (or the caller's own work before)
  hold it up for a minute after they end, and the load recorded at the start is then the caller's, not the
  machine's. After a wait every variant runs once more untimed (the first calls after an idle wait ran ~25 %
  slower, enough to put one pair of an evaluation's speedup over 1). The recorded start load is taken when the
  repetitions begin."""
  if not variants:
    raise ValueError("time_interleaved: no variants to time.")
  if repeats < MIN_REPEATS:
    raise ValueError(f"time_interleaved: repeats must be ≥ {MIN_REPEATS} (a median with its spread), got {repeats}.")
  load_start = check_load(on_high_load, load_limit)
  for name, fn in variants.items():
    for _ in range(warmup):
      _call(fn, sync, clock)
    if log:
      log(f"warmed up {name}")
  if settle_s > 0 and on_high_load != "ignore":
    load_start, waited = _settle(settle_s, high_load() if load_limit is None else load_limit, log)
    for fn in variants.values() if waited else ():  # after an idle wait the first calls run ~25 % slower
      _call(fn, sync, clock)
  samples, order = {k: [] for k in variants}, []
  for r in range(repeats):
    for name, fn in variants.items():
      samples[name].append(_call(fn, sync, clock))
      order.append(name)
    if log:
      log(f"repetition {r + 1}/{repeats}")
  load_end = os.getloadavg()
  if on_high_load != "ignore" and load_end[0] > thread_budget() + high_load():  # beyond what this run adds
    warnings.warn(f"the load average rose to {load_end[0]:.2f} during the timing; other work competed with it.",
                  stacklevel=2)
  return Timings({k: np.asarray(v) for k, v in samples.items()}, order, load_start, load_end, thread_budget(),
                 warmup)


def _settle(settle_s: float, limit: float, log, poll_s: float = 2.0) -> tuple[tuple[float, float, float], bool]:
  """Waits up to settle_s seconds for the 1-minute load to fall to `limit`: (the load average when it stops,
  whether it waited)."""
  deadline = time.monotonic() + settle_s
  load, waited = os.getloadavg(), False
  while load[0] > limit and time.monotonic() < deadline:
    time.sleep(poll_s)
    load, waited = os.getloadavg(), True
  if log:
    log(f"1-minute load {load[0]:.2f} when the repetitions start")
  return load, waited


def _call(fn, sync, clock) -> float:
  if hasattr(fn, "timed_call"):
    return float(fn.timed_call())
  t0 = clock()
  sync(fn())
  return clock() - t0


# --- a peer in its own process ---------------------------------------------------------------------------------
def _serve(conn, factory, args, threads):
  try:
    import torch
    torch.set_num_threads(threads)
  except ImportError:
    pass
  fn = factory(*args)
  conn.send(("ready", None))
  while conn.recv() == "run":
    t0 = time.perf_counter()
    out = fn()
    conn.send(("done", (time.perf_counter() - t0, out)))
  conn.close()


class ProcessVariant:
  """A variant that runs in its own (spawned) process, so its thread pool never shares a process with JAX's.

  `factory(*args)` (a picklable, module-level function) runs there once and returns the no-argument callable to
  time; each `timed_call()` runs it once and returns the seconds measured in that process; `last` holds its
  latest result (picklable). torch there gets `threads` intra-op threads (default `thread_budget()`)."""

  def __init__(self, factory: Callable, args: Sequence = (), threads: int | None = None, start_timeout: float = 600):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_serve, args=(child, factory, tuple(args), threads or thread_budget()),
                             daemon=True)
    self._proc.start()
    child.close()
    if not self._conn.poll(start_timeout):
      self.close()
      raise RuntimeError(f"ProcessVariant: {factory.__name__} did not start within {start_timeout} s.")
    self._conn.recv()
    self.last = None

  def timed_call(self) -> float:
    self._conn.send("run")
    _, (seconds, self.last) = self._conn.recv()
    return seconds

  def __call__(self):
    self.timed_call()
    return self.last

  def close(self) -> None:
    if self._proc.is_alive():
      try:
        self._conn.send("stop")
      except (BrokenPipeError, OSError):
        pass
      self._proc.join(10)
      if self._proc.is_alive():
        self._proc.terminate()
    self._conn.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# --- tables and results.md ----------------------------------------------------------------------------------------
def _refused(e: Refused) -> tuple[str, dict]:
  return f"refused ({e.short})", {"refused": str(e)}


def time_figure(samples: np.ndarray | Refused, scale: float = 1.0, spec: str = ".4g") -> tuple[str, dict]:
  """(table cell, JSON dict) of a time: median (min–max, IQR) of samples · scale, or the refusal's reason."""
  if isinstance(samples, Refused):
    return _refused(samples)
  est = estimate(np.asarray(samples) * scale)
  return est.fmt(spec), est.to_dict()


def ratio_figure(num: np.ndarray | Refused, den: np.ndarray | Refused, what: str = "ratio",
                 spec: str = ".3g", effect: bool = True) -> tuple[str, dict]:
  """(table cell, JSON dict) of num / den: ratio of medians with the per-pair spread, or 'refused (…)' when an
  input was refused, a time is ≤ 0, or (`effect`: the ratio claims a speedup) the per-pair range includes 1.
  effect=False is for a ratio that is a cost, not a claim (extend of n tokens / of 1), where ≈ 1 is a result."""
  for x in (num, den):
    if isinstance(x, Refused):
      return _refused(Refused(f"{what}: {x}", x.short))
  if effect:
    est, refusal = ratio_or_refusal(num, den, what)
  else:
    try:
      est, refusal = ratio(num, den, what), None
    except Refused as e:
      est, refusal = None, e
  return _refused(refusal) if est is None else (est.fmt(spec, "×"), est.to_dict())


def require_same_tokens(ours: Sequence[int], theirs: Sequence[int], what: str = "greedy tokens",
                        names: tuple[str, str] = ("dsv4", "the peer")) -> str:
  """'k/k' when two greedy decodes of the same prompt agree token for token; otherwise Refused naming the first
  difference: two runs that produce different tokens do different work, so their times are not compared."""
  ours, theirs = list(ours), list(theirs)
  same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
  if same == len(ours) == len(theirs):
    return f"{same}/{same}"
  n = max(len(ours), len(theirs))
  at = (f"at position {same} {names[0]} gave {ours[same] if same < len(ours) else 'nothing'}, {names[1]} "
        f"{theirs[same] if same < len(theirs) else 'nothing'}")
  raise Refused(f"{what}: {names[0]} and {names[1]} agree on the first {same} of {n} tokens; {at}. They would "
                "time different work, so nothing is timed: check that both load the same weights in the same dtype.",
                f"tokens differ: {same}/{n} agree")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """Markdown lines of a table with `header` and string cells."""
  if any(len(r) != len(header) for r in rows):
    raise ValueError(f"markdown_table: every row needs {len(header)} cells.")
  return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def load_mode(recording: bool, allow_load: bool) -> str:
  """`time_interleaved`'s on_high_load for a script: refuse a busy machine when recording results (unless
  --allow_load), warn otherwise."""
  return "refuse" if recording and not allow_load else "warn"


def run_or_refuse(main: Callable, argv=None):
  """Runs a benchmark script's `main(argv)`; a Refused result (a busy machine when recording, an impossible time)
  ends it with the reason on stderr, a final JSON line {"refused": reason} and exit status 2."""
  try:
    return main(argv)
  except Refused as e:
    print(f"refused: {e}", file=sys.stderr)
    print(json.dumps({"refused": str(e)}))
    sys.exit(2)


def write_results(out_dir: str | Path, script: str, argv, intro: str, table: list[str], result: dict,
                  extra: str = "") -> Path:
  """Writes OUT_DIR/results.md: the exact command, what was measured, the table and the final JSON."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  cmd = f"python {script} " + " ".join(sys.argv[1:] if argv is None else argv)
  path = out / "results.md"
  path.write_text(f"# {Path(script).stem}\n\nCommand: `{cmd}`\n\n{intro}\n\n" + "\n".join(table) +
                  (f"\n\n{extra}" if extra else "") + f"\n\n```json\n{json.dumps(result, indent=2)}\n```\n")
  return path
