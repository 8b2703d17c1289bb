"""A drafter run's results.md table: one row per held-out evaluation, read back from real event files."""

from dsv4.training.distill_report import curve_table, read_scalars, write_run_results
from dsv4.training.tensorboard import ScalarWriter


def test_table_rows_follow_the_held_out_evaluations(tmp_path):
  with ScalarWriter(tmp_path / "tensorboard", enabled=True) as writer:
    writer.scalars(0, {"val/tau_prob": 1.25, "val/accept_0": 0.2, "val/accept_1": 0.05, "val/loss": 3.0})
    for step in range(10, 50, 10):
      writer.scalars(step, {"train/loss": 2.0 - step / 100, "train/tokens_per_s": 1000.0 + step})
    writer.scalars(20, {"val/tau_prob": 1.5, "val/accept_0": 0.4, "val/accept_1": 0.25, "val/loss": 2.5})
  scalars = read_scalars(tmp_path / "tensorboard")
  table = curve_table(scalars)
  assert table[0] == "| step | held-out τ_prob | α_0 | α_1 | val loss | train loss | tokens/s |"
  assert table[2:] == ["| 0 | 1.250 | 0.200 | 0.050 | 3.000 | — | — |",
                       "| 20 | 1.500 | 0.400 | 0.250 | 2.500 | 1.800 | 1020 |"]
  path = write_run_results(tmp_path / "out", tmp_path, {"step": 40, "tau_prob": 1.5}, "A run.")
  text = path.read_text()
  assert "A run." in text and table[3] in text and '"tau_prob": 1.5' in text
