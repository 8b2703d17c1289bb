"""AppendLog: a reopened log replays what the same run finished, minus a torn last line or anything after a record
`accept` refuses; another run's key starts it over; appends survive a reopen."""

import json

from dsv4.data.append_log import AppendLog


def test_replay_torn_line_other_key_and_accept(tmp_path):
  path, said = tmp_path / "run.partial.jsonl", []
  log = AppendLog(path, "k1", said.append)
  assert log.records == [] and json.loads(path.read_text()) == {"key": "k1"}
  for b in range(3):
    log.append({"batch": b})
  with path.open("a") as f:
    f.write('{"batch": 3, "resp')  # what a kill mid-write leaves
  again = AppendLog(path, "k1", said.append)
  assert again.records == [{"batch": 0}, {"batch": 1}, {"batch": 2}] and not said
  assert path.read_text().endswith('{"batch": 2}\n')  # the torn line is gone from the file too
  again.append({"batch": 5})
  in_order = AppendLog(path, "k1", said.append, accept=lambda i, r: r["batch"] == i)
  assert [r["batch"] for r in in_order.records] == [0, 1, 2]
  assert AppendLog(path, "k2", said.append).records == [] and "another run" in said[-1]
  assert json.loads(path.read_text()) == {"key": "k2"}
