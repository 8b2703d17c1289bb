"""A careless command line through the real absl scripts (dsv4.cli): a typo'd config leaf, a config file that is not
there, an unknown scale, a bad training value. Each ends in one `error:` line that names the
flag or field and what to do, exit code 1, no traceback, and nothing written to the workdir."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, config, *args):
  """`script --config CONFIG ARGS` (or `--config=CONFIG` when given so) from the repository root."""
  flag = [config] if str(config).startswith("--config=") else ["--config", str(config)]
  return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *flag, *map(str, args)], capture_output=True,
                        text=True, cwd=ROOT, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def one_error_line(out) -> str:
  assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  return lines[0]


DRAFTER = ("train_drafter.py", "configs/drafter/dspark.py:tiny")
TARGET = ("train_target.py", "configs/target/tiny.py")


@pytest.mark.parametrize("script, config", [DRAFTER, TARGET])
def test_a_typo_in_a_config_leaf_says_did_you_mean(script, config, tmp_path):
  error = one_error_line(run(script, config, "--workdir", tmp_path / "w", "--config.train.stepz=10"))
  assert "--config.train.stepz" in error and "'steps'" in error, error
  error = one_error_line(run(script, config, "--workdir", tmp_path / "w", "--config.trian.steps=10"))
  assert "--config.trian.steps" in error and "'train'" in error, error
  assert not (tmp_path / "w").exists()


def test_evaluate_names_a_typo_and_a_missing_config_file(tmp_path):
  error = one_error_line(run("evaluate.py", "configs/eval/small.py", "--config.out_dirr=x"))
  assert "--config.out_dirr" in error and "'out_dir'" in error, error
  error = one_error_line(run("evaluate.py", tmp_path / "no_such_eval.py"))
  assert "no config file" in error and "no_such_eval.py" in error, error


@pytest.mark.parametrize("script, config", [DRAFTER, TARGET])
def test_a_missing_config_file_is_one_line_with_or_without_overrides(script, config, tmp_path):
  missing = config.split(":")[0].replace(".py", "_nope.py")
  error = one_error_line(run(script, missing, "--workdir", tmp_path / "w"))
  assert f"no config file {missing}" in error, error
  error = one_error_line(run(script, f"--config={missing}", "--workdir", tmp_path / "w", "--config.train.steps=3"))
  assert f"no config file {missing}" in error, error
  assert not (tmp_path / "w").exists()


def test_an_unknown_scale_is_one_line_naming_the_scales(tmp_path):
  error = one_error_line(run("train_drafter.py", "configs/drafter/dspark.py:huge", "--workdir", tmp_path))
  assert "unknown scale 'huge'" in error and "tiny" in error and "small" in error, error


def test_a_bad_training_value_is_one_line_before_the_target_is_trained(tmp_path):
  """The tiny drafter config trains its target into target.path first when none is there: lr=-1 stops before."""
  error = one_error_line(run(*DRAFTER, "--config.train.lr=-1", f"--config.target.path={tmp_path}/target",
                             f"--config.data.corpus_dir={tmp_path}/corpus", "--workdir", tmp_path / "w"))
  assert "config.train.lr: must be > 0" in error, error
  assert sorted(tmp_path.iterdir()) == []  # no corpus, target or workdir made


SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
  """Top-level names of every module a file imports, anywhere in it (a function-level import counts too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module.split(".")[0])
  return found


def main_returns(path: Path) -> list[str]:
  """The `return VALUE` statements of a script's main (not of functions nested in it): absl's app.run exits with
  main's value, so a returned dict would end a finished run with status 1."""
  main = next(node for node in ast.parse(path.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name == "main")
  found, todo = [], list(main.body)
  while todo:
    node = todo.pop()
    if isinstance(node, ast.Return) and node.value is not None:
      found.append(ast.unparse(node))
    elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      todo.extend(ast.iter_child_nodes(node))
  return found


def test_every_script_parses_its_command_line_with_absl_through_dsv4_cli():
  """One flag library: no script imports argparse, each one's entry point is `cli.run` (one-line errors), and no
  main returns a value (absl would make it the exit status)."""
  assert len(SCRIPTS) >= 17
  for path in SCRIPTS:
    assert "argparse" not in imported_modules(path), f"{path.name} imports argparse; define its flags with absl"
    assert "cli.run(" in path.read_text(), f"{path.name}: its entry point should be dsv4.cli.run(main)"
    assert main_returns(path) == [], f"{path.name}: main returns a value, which absl makes the exit status"


@pytest.mark.parametrize("script, listed", [
    ("demo.py", []),  # no flags of its own
    ("check_overlap.py", ["--eval_sets: an evaluation prompt set", "repeat this option"]),
    ("generate.py", ["--prompt_ids:", "--coordinator_address:"]),  # the latter defined by cli.multiprocess_flags
    ("bench_moe.py", ["--tokens: token counts per batch", "(default: '128,512')"])])
def test_help_shows_the_docstring_and_the_flags_and_exits_0(script, listed):
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0 and "Traceback" not in out.stderr, (out.returncode, out.stderr[-2000:])
  doc = ast.get_docstring(ast.parse((ROOT / "scripts" / script).read_text()))
  assert out.stdout.startswith(doc.splitlines()[0]), out.stdout[:500]
  for text in listed:
    assert text in out.stdout, (text, out.stdout)


def test_a_missing_required_flag_and_a_stray_argument_are_one_line_each():
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_overlap.py"), "--data", "d"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  error = one_error_line(out)
  assert "--tokenizer" in error and "--eval_sets" in error and "--data" not in error, error
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_overlap.py"), "--data", "d", "--tokenizer", "t",
                        "--eval_sets", "a.jsonl", "b.jsonl"], capture_output=True, text=True, cwd=ROOT, timeout=120)
  error = one_error_line(out)
  assert "['b.jsonl']" in error and "its own --eval_sets" in error, error


@pytest.mark.parametrize("script, args", [
    ("convert_checkpoint.py", ["--src", "a", "--dst", "b"]),
    ("train_target.py", ["--config", ROOT / "configs" / "target" / "tiny.py", "--workdir", "w"])])
def test_the_multiprocess_flags_are_checked_before_anything_starts(script, args, tmp_path):
  """cli.multiprocess_flags: --num_processes without the coordinator and this process's index is one line."""
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args), "--num_processes", "2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  error = one_error_line(out)
  assert "--num_processes=2 also needs --coordinator_address and --process_id" in error, error
  assert sorted(tmp_path.iterdir()) == []  # no workdir, no destination


@pytest.mark.parametrize("script, args", [
    ("train_drafter.py", ["--config", ROOT / "configs/drafter/dspark_small.py", "--workdir", "w",
                          "--config.data.source=someuser/somedataset"]),
    ("regenerate.py", ["--target", ROOT / "assets/targets/small", "--prompts", "someuser/somedataset", "--out", "d"])])
def test_a_hub_dataset_the_hub_does_not_serve_is_one_line_at_once(script, args, tmp_path):
  """A hub dataset name where the hub does not answer (HF_ENDPOINT on a closed local port: nothing leaves the
  machine), not in offline mode: one line naming the dataset and both ways out, no retries, nothing written."""
  env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120,
                       env=dict(env, JAX_PLATFORMS="cpu", HF_ENDPOINT="http://127.0.0.1:9"))
  error = one_error_line(out)
  assert error.startswith("error: someuser/somedataset: not a local path"), error
  assert "save_to_disk" in error and "HF_HUB_OFFLINE=1" in error, error
  assert sorted(tmp_path.iterdir()) == []


def test_ctrl_c_in_any_script_is_one_line_and_exit_130(tmp_path):
  """Scripts that keep no partial state (generate, demo, convert, benchmarks) stop on Ctrl-C with one line and
  exit 130, as the training scripts do, instead of a KeyboardInterrupt traceback."""
  import signal
  script = tmp_path / "sleeper.py"
  script.write_text("import time\nfrom dsv4 import cli\n\ndef main(argv):\n  print('ready', flush=True)\n"
                    "  time.sleep(120)\n\nif __name__ == '__main__':\n  cli.run(main)\n")
  # as from a terminal: pytest-xdist's workers ignore SIGINT and a child inherits that, so Python would install no
  # KeyboardInterrupt handler in it
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  assert proc.stdout.readline().strip() == "ready"
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  lines = [line for line in err.splitlines() if line.strip()]
  assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err[-2000:])
  assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)"), err
