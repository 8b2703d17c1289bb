"""What an evaluation run writes: a console table, results.json, results.csv, results.md (command, commit, table,
plots), TensorBoard scalars, PNG plots and the final JSON line (per drafter: tau, speedup, loop_efficiency, and τ
at T = 1 beside the trainer's τ_prob).

TensorBoard tags: `{set}/{drafter}/T{T}/tau` at step γ (a γ sweep is a curve), `{set}/{drafter}/g{γ}/T{T}/
conditional` and `.../survival` at step k, `{set}/{drafter}/g{γ}/T{T}/speedup` and `/loop_efficiency` at step 0.
Plots: conditional acceptance by position per drafter (one line per drafter × γ × T, per set), τ per prompt set
(bars per drafter), speedup per drafter (median with its min–max spread; refused figures are left out and named).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from dsv4.evaluation.harness import tau_prob_rows

CSV_FIELDS = ("set", "drafter", "block_size", "temperature", "tau", "rounds", "proposed", "accepted",
              "acceptance_rate", "tokens", "prompts", "matches_ar", "speedup", "speedup_min", "speedup_max",
              "loop_efficiency", "predicted_speedup", "tokens_per_s_ar", "tokens_per_s_spec", "tau_prob")


def _timing_row(results, cell):
  for tm in results["timing"]:
    if tm["set"] == cell["set"] and tm["temperature"] == cell["temperature"]:
      for r in tm["rows"]:
        if r["drafter"] == cell["drafter"] and r["block_size"] == cell["block_size"]:
          return r
  return None


def _fig(x, spec=".3g", suffix="×"):
  if x is None:
    return "—"
  if "refused" in x:
    return f"refused ({x['short']})"
  return f"{x['median']:{spec}}{suffix} ({x['min']:{spec}}–{x['max']:{spec}})"


def table_lines(results) -> list[str]:
  """Markdown table, one row per set × drafter × γ × T, then τ at T = 1 against τ_prob."""
  from dsv4.benchmarking import markdown_table
  rows = []
  for c in results["cells"]:
    r = _timing_row(results, c)
    rows.append([c["set"], c["drafter"], str(c["block_size"]), f"{c['temperature']:g}", f"{c['tau']:.3f}",
                 f"{c['acceptance_rate']:.3f}", str(c["rounds"]), str(c.get("matches_ar", "—")),
                 _fig(r and r["speedup"]), _fig(r and r["loop_efficiency"], suffix=""),
                 f"{r['predicted_speedup']:.3f}×" if r and r["predicted_speedup"] is not None else "—",
                 f"{r['tokens_per_s_ar']:.1f} / {r['tokens_per_s_spec']:.1f}" if r else "—"])
  lines = markdown_table(["set", "drafter", "γ", "T", "τ", "accept rate", "rounds", "= AR", "speedup",
                          "loop efficiency", "predicted", "tok/s AR / spec"], rows)
  peer_rows = [[tm["set"], p, f"{v['tokens_per_s']:.1f}", str(v["matches_ar"]), _fig(v["ar_speedup_over_peer"]),
                "; ".join(f"{r['drafter']}@{r['block_size']}: {_fig(r['speedup_over_peers'][p])}" for r in tm["rows"])]
               for tm in results["timing"] for p, v in tm.get("peers", {}).items()]
  if peer_rows and results["timing"][0]["rows"]:
    lines += ["", "transformers peers on the same weights (greedy, batch 1), timed in the same interleaved run:", ""]
    lines += markdown_table(["set", "peer", "tok/s", "= dsv4 AR", "dsv4 AR speedup over it",
                             "dsv4 speculative speedup over it"], peer_rows)
  for tm in results["timing"]:
    for p, why in tm.get("peers_unsupported", {}).items():
      lines += [f"{tm['set']}: peer {p} not run: {why}"]
  tp = tau_prob_rows(results)
  if tp:
    lines += ["", "τ at T = 1 (trained γ) against the trainer's held-out τ_prob (a T = 1 quantity):", ""]
    lines += markdown_table(["drafter", "set", "γ", "τ (T = 1)", "τ_prob", "τ / τ_prob"],
                            [[r["drafter"], r["set"], str(r["block_size"]), f"{r['tau_T1']:.3f}",
                              "—" if r["tau_prob"] is None else f"{r['tau_prob']:.3f}",
                              "—" if r["tau_prob"] is None else f"{r['tau_T1'] / r['tau_prob']:.3f}"] for r in tp])
  return lines


def csv_rows(results) -> list[dict]:
  out = []
  for c in results["cells"]:
    r = _timing_row(results, c) or {}
    sp, ef = r.get("speedup") or {}, r.get("loop_efficiency") or {}
    out.append({**{k: c.get(k) for k in CSV_FIELDS if k in c},
                "speedup": sp.get("median"), "speedup_min": sp.get("min"), "speedup_max": sp.get("max"),
                "loop_efficiency": ef.get("median"), "predicted_speedup": r.get("predicted_speedup"),
                "tokens_per_s_ar": r.get("tokens_per_s_ar"), "tokens_per_s_spec": r.get("tokens_per_s_spec"),
                "tau_prob": results["drafters"][c["drafter"]]["tau_prob"]})
  return out


def write_tensorboard(results, logdir) -> None:
  from dsv4.training.tensorboard import ScalarWriter
  with ScalarWriter(logdir, enabled=True) as w:
    for c in results["cells"]:
      base = f"{c['set']}/{c['drafter']}"
      w.scalars(c["block_size"], {f"{base}/T{c['temperature']:g}/tau": c["tau"]})
      for k, (cond, surv) in enumerate(zip(c["conditional"], c["survival"], strict=True), 1):
        vals = {f"{base}/g{c['block_size']}/T{c['temperature']:g}/survival": surv}
        if cond is not None:
          vals[f"{base}/g{c['block_size']}/T{c['temperature']:g}/conditional"] = cond
        w.scalars(k, vals)
      r = _timing_row(results, c)
      for key in ("speedup", "loop_efficiency"):
        if r and "refused" not in r[key]:
          w.scalars(0, {f"{base}/g{c['block_size']}/T{c['temperature']:g}/{key}": r[key]["median"]})


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first plot: evaluation without plots skips it)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(plt, fig, path) -> Path:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return Path(path)


def plot_conditional(cells, path, title="conditional acceptance by draft position") -> Path:
  """One panel per prompt set, one line per drafter × γ × T: conditional acceptance@k against k. A drafter × γ keeps
  its colour across temperatures and a temperature its line style, so that a dozen lines stay apart."""
  plt = _pyplot()
  sets = list(dict.fromkeys(c["set"] for c in cells))
  colours = {k: plt.get_cmap("tab20")(i % 20) for i, k in
             enumerate(dict.fromkeys((c["drafter"], c["block_size"]) for c in cells))}
  styles = {t: ("-", "--", ":", "-.")[i % 4] for i, t in enumerate(dict.fromkeys(c["temperature"] for c in cells))}
  fig, axes = plt.subplots(1, len(sets), figsize=(max(7.5, 5 * len(sets)), 3.8), squeeze=False)
  for ax, s in zip(axes[0], sets, strict=True):
    for c in (c for c in cells if c["set"] == s):
      y = [np.nan if v is None else v for v in c["conditional"]]
      ax.plot(range(1, len(y) + 1), y, marker="o", color=colours[c["drafter"], c["block_size"]],
              linestyle=styles[c["temperature"]],
              label=f"{c['drafter']} γ={c['block_size']} T={c['temperature']:g}")
    ax.set(title=s, xlabel="draft position k", ylabel="P(accept k | accepted k−1)", ylim=(0, 1.05))
    ax.set_xticks(range(1, 1 + max(len(c["conditional"]) for c in cells if c["set"] == s)))
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the lines stay visible
  fig.suptitle(title, fontsize=10)
  return _save(plt, fig, path)


def plot_tau(cells, path) -> Path:
  plt = _pyplot()
  sets = list(dict.fromkeys(c["set"] for c in cells))
  keys = list(dict.fromkeys((c["drafter"], c["block_size"], c["temperature"]) for c in cells))
  fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(sets) * len(keys) ** 0.5), 3.6))
  width = 0.8 / len(keys)
  for j, key in enumerate(keys):
    ys = [next((c["tau"] for c in cells if c["set"] == s and (c["drafter"], c["block_size"], c["temperature"]) == key),
               np.nan) for s in sets]
    ax.bar(np.arange(len(sets)) + j * width, ys, width, label=f"{key[0]} γ={key[1]} T={key[2]:g}")
  ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, sets)
  ax.set(ylabel="τ (accepted length)", title="τ per prompt set")
  ax.legend(fontsize=7)
  return _save(plt, fig, path)


def plot_speedup(timing, path) -> Path:
  plt = _pyplot()
  labels, med, lo, hi, refused = [], [], [], [], []
  for tm in timing:
    for r in tm["rows"]:
      label = f"{tm['set']}\n{r['drafter']} γ={r['block_size']} T={tm['temperature']:g}"
      if "refused" in r["speedup"]:
        refused.append(label.replace("\n", " "))
        continue
      labels.append(label)
      med.append(r["speedup"]["median"])
      lo.append(r["speedup"]["median"] - r["speedup"]["min"])
      hi.append(r["speedup"]["max"] - r["speedup"]["median"])
  fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels)), 3.8))
  if labels:
    ax.bar(range(len(labels)), med, yerr=[lo, hi], capsize=4)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
  ax.axhline(1.0, color="k", lw=0.8, ls="--")
  ax.set(ylabel="speedup over dsv4 AR (×)", title="wall-clock speedup (median, min–max)" +
         (f"\nrefused (inside the noise): {', '.join(refused)}" if refused else ""))
  return _save(plt, fig, path)


def final_line(results) -> str:
  extra = {"interrupted": results["interrupted"]} if results.get("interrupted") else {}
  return json.dumps({"drafters": results["summary"], **extra})


def markdown(results, paths: dict) -> str:
  """results.md: the command and commit that made it, the table, the plots and the final JSON line, so that the
  folder copied under experiments/ is the record."""
  made = results.get("provenance") or {}
  lines = [f"# Evaluation on {results['target']}", ""]
  if made.get("command"):
    dirty = " (with uncommitted changes)" if made.get("commit_dirty") else ""
    lines += [f"Command: `{made['command']}`", "", f"Commit: {made.get('commit')}{dirty}", ""]
  loads = [f"{tm['set']} (T = {tm['temperature']:g}): {tm['load']}" for tm in results["timing"] if tm.get("load")]
  if loads:
    lines += ["Load while timing: " + "; ".join(loads), ""]
  if results.get("interrupted"):
    lines += [f"**{results['interrupted']}.**", ""]
  lines += table_lines(results) + [""]
  lines += [f"![{k}]({p.name})" for k, p in paths.items() if k.endswith("_png")] + [""]
  lines += ["```json", final_line(results), "```", ""]
  return "\n".join(lines)


def write_all(results, out_dir, log=print) -> dict:
  """Every output file under out_dir; returns their paths."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / "results.json", "csv": out / "results.csv", "tensorboard": out / "tensorboard",
           "conditional_png": out / "conditional_acceptance.png", "tau_png": out / "tau_per_set.png",
           "speedup_png": out / "speedup.png", "md": out / "results.md"}
  paths["json"].write_text(json.dumps(results, indent=2, default=float) + "\n")
  with paths["csv"].open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(csv_rows(results))
  write_tensorboard(results, paths["tensorboard"])
  if results["cells"]:
    plot_conditional(results["cells"], paths["conditional_png"])
    plot_tau(results["cells"], paths["tau_png"])
  else:  # Ctrl-C before the first cell finished: nothing to plot, the rest is still written
    del paths["conditional_png"], paths["tau_png"]
  plot_speedup(results["timing"], paths["speedup_png"])
  paths["md"].write_text(markdown(results, paths))
  for line in table_lines(results):
    log(line)
  log(f"wrote {', '.join(str(p) for p in paths.values())}")
  return paths
