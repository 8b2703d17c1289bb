"""A careless new user's pass over issue 16's list, from a clean clone, every command run from another folder.

  git clone REPO /tmp/clean16
  PYTHONPATH=/tmp/clean16 python /tmp/clean16/experiments/user_faults_pass/run_pass.py --clone /tmp/clean16 \
      --scratch /tmp/pass16 [--only ID,ID] [--skip_heavy]

Each item runs one real command (the clone's scripts, relative workdirs inside SCRATCH, the smallest configs, a few
steps) and records its exit status, wall time, the number of output lines (stdout and stderr together), the first
lines and the line that matched what the issue expects. `expected` is a regex on the output plus an exit status and
a line budget; some items add a check of what the run left on disk (no temporary checkpoint folder, the resumed
step equals the interrupted one). The table is written to results.md next to this file (or --out).

Not a test and not run by CI: it takes ~20 minutes of real training, decoding and corpus building. --skip_heavy
leaves out the items that train for tens of seconds (the interrupts, the demo, the README data sequence).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Item:
  id: str
  section: str
  what: str
  cmd: str                        # bash; {py} = this interpreter, {C} = the clone, run in SCRATCH
  expect: str                     # regex the output must contain
  rc: tuple[int, ...] = (1,)      # accepted exit statuses
  max_lines: int | None = 3       # output lines allowed (progress bars and logs count); None: a run that trains
  heavy: bool = False
  setup: Callable[[Path, Path], None] | None = None
  check: Callable[[Path, str, dict], str] | None = None   # (scratch, output, earlier results) -> "" or a problem
  env: dict = field(default_factory=dict)
  library: bool = False           # a library call: Python's traceback is expected, its last line is the message


def _corrupt_middle(path: Path, n: int = 4096) -> None:
  size = path.stat().st_size
  with open(path, "r+b") as f:
    f.seek(size // 2)
    f.write(b"\xff" * n)


def _bad_target(clone: Path, scratch: Path) -> None:
  dst = scratch / "bad_target"
  if not dst.exists():
    shutil.copytree(clone / "assets/targets/small", dst)
    _corrupt_middle(dst / "model.safetensors")


def _copy_base(name: str, mutate: Callable[[Path], None]) -> Callable[[Path, Path], None]:
  def setup(clone: Path, scratch: Path) -> None:
    dst = scratch / name
    if not dst.exists():
      shutil.copytree(scratch / "w_base", dst)
      mutate(dst)
  return setup


def _largest_array_file(workdir: Path) -> Path:
  step = max((p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  return max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate_largest_array_file(workdir: Path) -> None:
  path = _largest_array_file(workdir)
  os.truncate(path, path.stat().st_size // 2)


def _overwrite_largest_array_file(workdir: Path) -> None:
  _corrupt_middle(_largest_array_file(workdir))


def _drop_meta(workdir: Path) -> None:
  for step in (workdir / "checkpoints").iterdir():
    shutil.rmtree(step / "meta", ignore_errors=True)


def _tmp_only(clone: Path, scratch: Path) -> None:
  (scratch / "w_tmponly/checkpoints/40.orbax-checkpoint-tmp-1796600000000000").mkdir(parents=True, exist_ok=True)


def _shadow(clone: Path, scratch: Path) -> None:
  d = scratch / "shadow"
  d.mkdir(exist_ok=True)
  if not (d / "dsv4").exists():
    (d / "dsv4").symlink_to(clone)  # a clone folder named dsv4 next to the user's script
  (d / "use.py").write_text("import dsv4\nprint(dsv4.load_drafter)\n")


def _no_tmp_left(workdir: str) -> Callable[[Path, str, dict], str]:
  def check(scratch: Path, out: str, earlier: dict) -> str:
    left = [p.name for p in (scratch / workdir / "checkpoints").glob("*") if "tmp" in p.name]
    return f"left {left}" if left else ""
  return check


def _resumed_where_stopped(stopped_id: str) -> Callable[[Path, str, dict], str]:
  def check(scratch: Path, out: str, earlier: dict) -> str:
    stopped = re.search(r"stopped at step (\d+)", earlier.get(stopped_id, {}).get("output", ""))
    resumed = re.search(r"resuming from .*\(step (\d+)\)", out)
    if not stopped or not resumed:
      return "no stop or no resume line"
    return "" if stopped.group(1) == resumed.group(1) else f"stopped at {stopped.group(1)}, resumed {resumed.group(1)}"
  return check


def _last_json(out: str) -> dict:
  for line in reversed(out.splitlines()):
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        pass
  return {}


def _lr_recorded(scratch: Path, out: str, earlier: dict) -> str:
  resumes = _last_json(out).get("resumes", [])
  return "" if any("train.lr" in r.get("changes", {}) for r in resumes) else f"resumes not recorded: {resumes}"


def _no_compile_in_eta(scratch: Path, out: str, earlier: dict) -> str:
  timed = re.findall(r"1/3 \[\d\d:(?!00)[^\]]*\]", out)  # elapsed > 0 at step 1: the compile was counted
  return f"frames counting the compile: {timed}" if timed else ""


def _converted(scratch: Path, out: str, earlier: dict) -> str:
  src, hf = Path(out.split("SRC=")[1].split()[0]), scratch / "conv_hf"
  problems = [f"{d.name} lacks tokenizer.json" for d in (scratch / "conv_orbax", hf)
              if not (d / "tokenizer.json").exists()]
  a, b = (src / "model.safetensors").stat().st_size, (hf / "model.safetensors").stat().st_size
  if b > 1.1 * a:
    problems.append(f"--to-hf wrote {b / 1e6:.1f} MB from a {a / 1e6:.1f} MB source")
  return "; ".join(problems)


# A Ctrl-C after N seconds; the exit status is the script's own (timeout would say 124).
STOP = "timeout --preserve-status -s INT"
DRAFT = "{py} {C}/scripts/train_drafter.py --config {C}/configs/drafter/dspark_small.py"
SHORT = "--config.train.steps=3 --config.train.eval_batches=1"
INT_RUN = (f"{DRAFT} --workdir w_int --config.train.steps=60 --config.train.checkpoint_every=20 "
           "--config.train.eval_every=60 --config.train.eval_batches=1")
SAVE_RUN = (f"{DRAFT} --workdir w_intsave --config.train.steps=60 --config.train.checkpoint_every=1 "
            "--config.train.eval_every=60 --config.train.eval_batches=1")
TARGET_RUN = ("{py} {C}/scripts/train_target.py --config {C}/configs/target/tiny.py --workdir t_int "
              "--config.train.steps=400 --config.train.checkpoint_every=100 --config.train.eval_every=400")
REGEN = "{py} {C}/scripts/regenerate.py --target {C}/assets/targets/small --prompts stdlib --no_progress"
GEN = "{py} {C}/scripts/generate.py"
LOAD = "{py} -c \"import dsv4; d = dsv4.load_drafter('%s'); print(type(d).__name__, d.target is not None)\""

ITEMS = [
    # The runs later items reuse: a 3-step DSpark run, from a folder that is not the clone (paths item too).
    Item("base", "paths", "train_drafter from another folder, relative --workdir", f"{DRAFT} --workdir w_base {SHORT}",
         r'"checkpoint": "/.*/w_base/checkpoints/3"', rc=(0,), max_lines=None),
    # Interrupts
    Item("int_drafter", "interrupts", "SIGINT in train_drafter mid-run", f"{STOP} 55 {INT_RUN}",
         r"stopped at step \d+ \(SIGINT\), checkpoint saved; re-run the same command to resume", rc=(130,),
         max_lines=None, heavy=True),
    Item("int_drafter_resume", "interrupts", "the same command again (SIGINT after 35 s)",
         f"{STOP} 35 {INT_RUN}", r"resuming from", rc=(130, 0), max_lines=None, heavy=True,
         check=_resumed_where_stopped("int_drafter")),
    Item("int_async_save", "interrupts", "SIGINT with a checkpoint every step (async saves in flight)",
         f"{STOP} 50 {SAVE_RUN}", r"stopped at step \d+ \(SIGINT\), checkpoint saved", rc=(130,),
         max_lines=None, heavy=True, check=_no_tmp_left("w_intsave")),
    Item("tmp_only", "interrupts", "a workdir holding only a temporary checkpoint folder",
         f"{DRAFT} --workdir w_tmponly --config.train.steps=1 --config.train.eval_batches=1",
         r"holds only an unfinished checkpoint .*starting over from step 0", rc=(0,), max_lines=None, heavy=True,
         setup=_tmp_only),
    Item("int_target", "interrupts", "SIGINT in train_target (tiny, builds its corpus first)",
         f"{STOP} 100 {TARGET_RUN}", r"stopped at step \d+ \(SIGINT\), checkpoint saved", rc=(130,),
         max_lines=None, heavy=True),
    Item("int_regenerate", "interrupts", "SIGINT in regenerate.py",
         f"{STOP} 40 {REGEN} --split train --out regen_int --num_prompts 256 --batch_size 4",
         r"interrupted: the responses of \d+ of 256 prompts are kept", rc=(130,), max_lines=8, heavy=True),
    Item("int_regenerate_resume", "interrupts", "the same regenerate command again (SIGINT after 30 s)",
         f"{STOP} 30 {REGEN} --split train --out regen_int --num_prompts 256 --batch_size 4",
         r"resuming: [1-9]\d* of 256 responses kept", rc=(130, 0), max_lines=8, heavy=True),
    Item("int_evaluate", "interrupts", "SIGINT in evaluate.py (the shipped small drafter)",
         STOP + " 60 {py} {C}/scripts/evaluate.py --config {C}/configs/eval/small.py "
         "--config.out_dir=eval_int --config.peers.enabled=False", r"interrupt", rc=(130,), max_lines=None, heavy=True),
    # Reusing a workdir
    Item("reuse_dflash", "workdir reuse", "dflash.py:small in a DSpark workdir",
         "{py} {C}/scripts/train_drafter.py --config {C}/configs/drafter/dflash.py:small --workdir w_base " + SHORT,
         r"holds a dspark run .*use a new --workdir"),
    Item("reuse_block_size", "workdir reuse", "--config.drafter.block_size=3 on a resumable workdir",
         f"{DRAFT} --workdir w_base {SHORT} --config.drafter.block_size=3", r"Changed: drafter.block_size: 7 → 3"),
    Item("reuse_target_workdir", "workdir reuse", "a train_target workdir given to train_drafter",
         f"{DRAFT} --workdir t_int {SHORT}", r"is a target pretraining workdir", heavy=True),
    Item("reuse_lr", "workdir reuse", "--config.train.lr=1e-4 (a safe change) with one more step",
         f"{DRAFT} --workdir w_base --config.train.steps=4 --config.train.eval_batches=1 --config.train.lr=1e-4",
         r"train\.lr", rc=(0,), max_lines=None, check=_lr_recorded),
    # Bad weights and checkpoints
    Item("bad_target_generate", "bad weights", "generate.py on a target with 4 KB of 0xFF in model.safetensors",
         GEN + " --model bad_target --prompt 'def f(x):' --max_new_tokens 8",
         r"model\.safetensors: tensor \S+ has \d+ non-finite", setup=_bad_target),
    Item("bad_target_train", "bad weights", "train_drafter distilling from that target",
         f"{DRAFT} --workdir w_badtarget {SHORT} --config.target.path=bad_target",
         r"model\.safetensors: tensor \S+ has \d+ non-finite", max_lines=8, setup=_bad_target),
    Item("bad_ckpt_load", "bad weights", "dsv4.load_drafter on a checkpoint whose largest array file is cut in half",
         LOAD % "w_badckpt", r"CheckpointError: .*w_badckpt/checkpoints/4/state is unreadable", max_lines=12,
         library=True, setup=_copy_base("w_badckpt", _truncate_largest_array_file)),
    Item("bad_ckpt_bytes", "bad weights", "dsv4.load_drafter on a checkpoint with 4 KB of 0xFF in its largest array "
         "file", LOAD % "w_badbytes", r"CheckpointError: .*unreadable", max_lines=12, library=True,
         setup=_copy_base("w_badbytes", _overwrite_largest_array_file)),
    Item("no_meta_load", "bad weights", "dsv4.load_drafter on a checkpoint without meta/",
         LOAD % "w_nometa", r"CheckpointError: .*w_nometa/checkpoints/4: no meta/ folder", max_lines=12, library=True,
         setup=_copy_base("w_nometa", _drop_meta)),
    Item("bad_ckpt_train", "bad weights", "train_drafter resuming from the cut checkpoint",
         f"{DRAFT} --workdir w_badckpt --config.train.steps=5 --config.train.eval_batches=1",
         r"checkpoint step 4 in .* is unreadable .*delete .*to resume from step 3", max_lines=8,
         setup=_copy_base("w_badckpt", _truncate_largest_array_file)),
    # Paths and names
    Item("load_relative", "paths", "dsv4.load_drafter('w_base'), a relative path", LOAD % "w_base",
         r"DSparkDrafter True|Drafter True", rc=(0,), max_lines=2),
    Item("generate_elsewhere", "paths", "generate.py from another folder on the shipped target",
         GEN + " --model {C}/assets/targets/small --prompt 'def f(x):' --max_new_tokens 8", r'"outputs": \[\[',
         rc=(0,), max_lines=8),
    Item("shadow_clone", "paths", "a clone folder named dsv4 beside a user's script (installed package, no "
         "PYTHONPATH): fails as the README says (Python imports the folder; no dsv4 code runs)",
         "cd shadow && env -u PYTHONPATH {py} use.py", r"module 'dsv4' has no attribute 'load_drafter'", max_lines=12,
         library=True, setup=_shadow),
    Item("shadow_documented", "paths", "the README says so where users read first",
         "grep -n 'namespace package' {C}/README.md", r"namespace package", rc=(0,), max_lines=2),
    # Messages that mislead or arrive as tracebacks
    Item("no_model", "messages", "generate.py --model no/such/dir --prompt x", GEN + " --model no/such/dir --prompt x",
         r"no/such/dir"),
    Item("missing_source", "messages", "a missing --config.data.source file",
         f"{DRAFT} --workdir w_x {SHORT} --config.data.source=no_such_file.jsonl",
         r"no_such_file\.jsonl: no such file"),
    Item("hub_train", "messages", "a hub dataset name, no network (train_drafter)",
         f"{DRAFT} --workdir w_x {SHORT} --config.data.source=someuser/somedataset",
         r"someuser/somedataset.*(save_to_disk|HF_HUB_OFFLINE)"),
    Item("hub_regenerate", "messages", "a hub dataset name, no network (regenerate.py)",
         f"{REGEN} --prompts someuser/somedataset --split train --out regen_hub --num_prompts 4",
         r"someuser/somedataset.*(save_to_disk|HF_HUB_OFFLINE)"),
    Item("hub_unreachable_endpoint", "messages", "a hub name where the hub's host resolves but does not answer "
         "(HF_ENDPOINT=http://127.0.0.1:9)", f"{DRAFT} --workdir w_x {SHORT} --config.data.source=someuser/somedataset",
         r"someuser/somedataset.*(save_to_disk|HF_HUB_OFFLINE)", env={"HF_ENDPOINT": "http://127.0.0.1:9"}),
    Item("typo_leaf", "messages", "--config.train.stepz=10", f"{DRAFT} --workdir w_x --config.train.stepz=10",
         r"(?i)did you mean 'steps'"),
    Item("no_config_file", "messages", "a nonexistent config file",
         "{py} {C}/scripts/train_drafter.py --config nope.py --workdir w_x", r"nope\.py"),
    Item("unknown_scale", "messages", "an unknown scale (:huge)",
         "{py} {C}/scripts/train_drafter.py --config {C}/configs/drafter/dspark.py:huge --workdir w_x", r"huge"),
    Item("seq_len_huge", "messages", "--config.data.seq_len=100000",
         f"{DRAFT} --workdir w_x {SHORT} --config.data.seq_len=100000", r"seq_len"),
    Item("seq_len_tiny_target", "messages", "seq_len=6144 against the tiny target's 4096 positions (train_target)",
         "{py} {C}/scripts/train_target.py --config {C}/configs/target/tiny.py --workdir t_x "
         "--config.data.seq_len=6144", r"seq_len.*4096"),
    Item("seq_len_tiny_drafter", "messages", "seq_len=6144, drafter on the tiny target of int_target",
         "{py} {C}/scripts/train_drafter.py --config {C}/configs/drafter/dspark.py:tiny --workdir w_x "
         "--config.target.path=t_int --config.data.seq_len=6144 " + SHORT, r"seq_len.*4096", heavy=True),
    Item("demo_help", "messages", "scripts/demo.py --help", "{py} {C}/scripts/demo.py --help", r"--\[no\]|USAGE|flags",
         rc=(0,), max_lines=60),
    # Small things a user notices
    Item("demo_piped", "small things", "the demo piped to a file: no ANSI codes (first 150 s)",
         STOP + " 150 {py} {C}/scripts/demo.py | cat", r"\S", rc=(0, 130, 124), max_lines=None, heavy=True,
         check=lambda scratch, out, earlier: "ANSI codes in the output" if "\x1b[" in out else ""),
    Item("eta", "small things", "the progress bar's frames at step 1 (the base run's output)",
         "tr '\\r' '\\n' < base.log | grep ' 1/3 '", r"1/3 \[00:00<\?", rc=(0,), max_lines=4,
         check=_no_compile_in_eta),
    Item("convert", "small things", "convert_checkpoint to orbax and back --to-hf: tokenizer.json kept, bf16 kept",
         "{py} {C}/scripts/convert_checkpoint.py --src {C}/assets/targets/small --dst conv_orbax --overwrite && "
         "{py} {C}/scripts/convert_checkpoint.py --src conv_orbax --dst conv_hf --to-hf --overwrite && "
         "echo SRC={C}/assets/targets/small", r"SRC=", rc=(0,), max_lines=8, check=_converted),
    Item("readme_regenerate_train", "small things", "README's regenerate sequence (8 prompts), train split",
         f"{REGEN} --split train --out regen_readme --num_prompts 8 --max_new_tokens 32 --batch_size 8",
         r'"split": "train"', rc=(0,), max_lines=8, heavy=True),
    Item("readme_regenerate_validation", "small things", "then the validation split",
         f"{REGEN} --split validation --out regen_readme --num_prompts 8 --max_new_tokens 32 --batch_size 8",
         r'"split": "validation"', rc=(0,), max_lines=8, heavy=True),
    Item("readme_regenerate_drafter", "small things", "then train_drafter on it (2 steps)",
         "{py} {C}/scripts/train_drafter.py --config {C}/configs/drafter/dspark.py:small --workdir w_regen "
         "--config.data.source=regen_readme --config.train.steps=2 --config.train.eval_batches=1 "
         "--config.train.batch_size=2", r'"checkpoint"', rc=(0,), max_lines=None, heavy=True),
    Item("license_warnings", "small things", "setuptools reads pyproject.toml without deprecation warnings",
         "{py} -W always -c \"from setuptools.config.pyprojecttoml import apply_configuration as a; "
         "from setuptools.dist import Distribution; a(Distribution(), '{C}/pyproject.toml'); print('read')\"",
         r"\A(?![\s\S]*[Dd]eprecat)[\s\S]*read", rc=(0,), max_lines=1),
    Item("time_claims", "small things", "the tiny target's training time as measured, not '~1 minute'",
         "grep -rn -i '1 minute' {C}/configs/target {C}/configs/drafter {C}/README.md; "
         "grep -Hn 'minutes' {C}/configs/target/tiny.py", r"tiny\.py:\d+:.*9 minutes", rc=(0,), max_lines=1),
]


def _lines(text: str) -> list[str]:
  return [line.split("\r")[-1] if line.split("\r")[-1].strip() else line for line in text.splitlines()]


def run_item(item: Item, clone: Path, scratch: Path) -> dict:
  if item.setup:
    item.setup(clone, scratch)
  cmd = item.cmd.format(py=sys.executable, C=clone)
  env = {**os.environ, "PYTHONPATH": str(clone), "JAX_PLATFORMS": "cpu", **item.env}
  t0 = time.perf_counter()
  p = subprocess.run(["bash", "-c", cmd], cwd=scratch, env=env, capture_output=True, text=True, errors="replace")
  wall = time.perf_counter() - t0
  out = p.stdout + p.stderr
  if item.id == "base":
    (scratch / "base.log").write_text(out)
  return dict(id=item.id, cmd=item.cmd.format(py="python", C="$CLONE"), rc=p.returncode, wall=wall, output=out)


def judge(item: Item, record: dict, scratch: Path, earlier: dict) -> dict:
  """The table row of a recorded run: its lines, the matched line, and the verdict."""
  out, lines = record["output"], _lines(record["output"])
  match = re.search(item.expect, out, re.MULTILINE)
  problems = []
  if record["rc"] not in item.rc:
    problems.append(f"rc {record['rc']}")
  if not match:
    problems.append("expected message missing")
  if item.max_lines is not None and len(lines) > item.max_lines:
    problems.append(f"{len(lines)} lines > {item.max_lines}")
  if item.library:
    if not lines or not re.search(item.expect, lines[-1]):
      problems.append("the last line is not the message")
  elif "Traceback (most recent call last)" in out:
    problems.append("traceback")
  if "Segmentation fault" in out:
    problems.append("segfault")
  if item.check:
    problems.append(item.check(scratch, out, earlier))
  problems = [x for x in problems if x]
  matched = next((ln for ln in lines if match and re.search(item.expect, ln)), "")
  return dict(record, what=item.what, n_lines=len(lines), first=lines[:2], matched=matched,
              verdict="pass" if not problems else "FAIL: " + "; ".join(problems))


def _cell(text: str, n: int = 180) -> str:
  text = text.replace("|", "\\|").replace("\x1b", "ESC").strip()
  return (text[:n] + "…") if len(text) > n else text


def write_table(results: list[dict], out: Path, commit: str) -> None:
  rows = ["| item | what | command | rc | s | lines | first lines / matched line | verdict |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    shown = "<br>".join(_cell(x) for x in r["first"])
    if r["matched"] and r["matched"] not in r["first"]:
      shown += "<br>… " + _cell(r["matched"])
    rows.append(f"| {r['id']} | {_cell(r['what'])} | `{_cell(r['cmd'], 400)}` | {r['rc']} | {r['wall']:.0f} | "
                f"{r['n_lines']} | {shown} | {r['verdict']} |")
  passed = sum(r["verdict"] == "pass" for r in results)
  out.write_text(
      "# Issue 16's careless-user pass, repeated from a clean clone\n\n"
      f"Generated by `experiments/user_faults_pass/run_pass.py` from a clone at commit {commit[:12]}, every command "
      "run in a scratch folder outside the clone (`$CLONE` is the clone; relative workdirs live in the scratch "
      "folder). rc: exit status; s: wall seconds on a shared 2-core machine; lines: stdout + stderr lines "
      "(a progress bar's redraws on one line count once). The verdict checks the exit status, the expected message, "
      f"the line budget, that no traceback was printed, and for some items what was left on disk.\n\n"
      f"**{passed} of {len(results)} items pass.**\n\n" + "\n".join(rows) + "\n")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--clone", required=True, type=Path)
  ap.add_argument("--scratch", required=True, type=Path)
  ap.add_argument("--only", default="", help="comma-separated item ids")
  ap.add_argument("--skip_heavy", action="store_true")
  ap.add_argument("--out", type=Path, default=HERE / "results.md")
  ap.add_argument("--table_only", action="store_true", help="judge the runs recorded in SCRATCH again, run nothing")
  args = ap.parse_args()
  clone, scratch = args.clone.resolve(), args.scratch.resolve()
  scratch.mkdir(parents=True, exist_ok=True)
  only = set(filter(None, args.only.split(",")))
  commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
  saved = scratch / "results.json"
  earlier = json.loads(saved.read_text()) if saved.exists() else {}
  if args.table_only:
    commit = earlier.get("_commit", commit)
  for item in ITEMS:
    if args.table_only or (only and item.id not in only) or (args.skip_heavy and item.heavy):
      continue
    earlier[item.id] = run_item(item, clone, scratch)
    earlier["_commit"] = commit
    saved.write_text(json.dumps(earlier, indent=1))
    r = judge(item, earlier[item.id], scratch, earlier)
    print(f"{item.id}: rc {r['rc']}, {r['wall']:.0f} s, {r['n_lines']} lines: {r['verdict']}", flush=True)
  write_table([judge(i, earlier[i.id], scratch, earlier) for i in ITEMS if i.id in earlier], args.out, commit)


if __name__ == "__main__":
  main()
