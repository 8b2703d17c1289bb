"""results.md for a drafter run, generated from its TensorBoard events (read by TensorBoard's own loader).

One row per held-out evaluation: held-out τ_prob, per-slot expected acceptance α_k, the held-out loss terms and
confidence calibration, next to the training loss and throughput logged at that step.
"""

from __future__ import annotations

from pathlib import Path

from dsv4.benchmarking import write_results


def read_scalars(logdir: str | Path) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar in an event directory (the last value written wins on a resumed run)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
  events.Reload()
  return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def curve_table(scalars: dict[str, dict[int, float]]) -> list[str]:
  """The markdown table of held-out evaluations (step 0 is the initialisation)."""
  slots = sorted(int(t.rsplit("_", 1)[1]) for t in scalars if t.startswith("val/accept_"))
  cols = [("val/tau_prob", "held-out τ_prob", "{:.3f}"), *((f"val/accept_{k}", f"α_{k}", "{:.3f}") for k in slots),
          ("val/loss", "val loss", "{:.3f}"), ("val/ce", "val CE", "{:.3f}"), ("val/l1", "val L1", "{:.3f}"),
          ("val/conf_ece", "conf ECE", "{:.3f}"), ("train/loss", "train loss", "{:.3f}"),
          ("train/tokens_per_s", "tokens/s", "{:.0f}")]
  cols = [c for c in cols if c[0] in scalars]
  rows = ["| step | " + " | ".join(name for _, name, _ in cols) + " |", "| --- |" + " --- |" * len(cols)]
  for step in sorted(scalars.get("val/tau_prob", {})):
    cells = [fmt.format(scalars[tag][step]) if step in scalars[tag] else "—" for tag, _, fmt in cols]
    rows.append(f"| {step} | " + " | ".join(cells) + " |")
  return rows


def write_run_results(out_dir: str | Path, workdir: str | Path, result: dict, intro: str) -> Path:
  return write_results(out_dir, "scripts/train_drafter.py", None, intro,
                       curve_table(read_scalars(Path(workdir) / "tensorboard")), result)
