"""Build the embedded default corpus (this interpreter's stdlib source + a BPE trained on its train split).

  python scripts/build_corpus.py                                  # → data/stdlib_corpus
  python scripts/build_corpus.py --out /tmp/tiny --max_files 40   # a small subset, for quick experiments

Needs no network. The last line printed is one JSON object: out, files and bytes per split, vocab_size, hash,
seconds.
"""

from __future__ import annotations

import json
import sys
import time

from absl import flags

from dsv4 import cli
from dsv4.data.corpus import DEFAULT_CORPUS_DIR, SPLITS, build_corpus
from dsv4.errors import Dsv4Error

_OUT = flags.DEFINE_string("out", str(DEFAULT_CORPUS_DIR), "corpus directory")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "BPE vocabulary size")
_MAX_FILES = flags.DEFINE_integer("max_files", None, "a deterministic subset of about this many files")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing corpus at --out")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag (see --help)")
  start = time.time()
  try:
    m = build_corpus(_OUT.value, vocab_size=_VOCAB.value, max_files=_MAX_FILES.value, overwrite=_OVERWRITE.value,
                     progress=True, log=lambda msg: print(msg, file=sys.stderr))
  except Dsv4Error as e:
    sys.exit(f"error: {e}")
  print(json.dumps({"out": str(_OUT.value), "files": {s: m["splits"][s]["files"] for s in SPLITS},
                    "bytes": {s: m["splits"][s]["bytes"] for s in SPLITS}, "vocab_size": m["tokenizer"]["vocab_size"],
                    "hash": m["hash"], "seconds": round(time.time() - start, 2)}))


if __name__ == "__main__":
  cli.run(main)
