"""Build the embedded default corpus (this interpreter's stdlib source + a BPE trained on its train split).

  python scripts/build_corpus.py                                  # → data/stdlib_corpus
  python scripts/build_corpus.py --out /tmp/tiny --max_files 40   # a small subset, for quick experiments

Needs no network. The last line printed is one JSON object: out, files and bytes per split, vocab_size, hash,
seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from dsv4.data.corpus import DEFAULT_CORPUS_DIR, SPLITS, build_corpus
from dsv4.errors import Dsv4Error


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=DEFAULT_CORPUS_DIR, help="corpus directory (default: %(default)s)")
  p.add_argument("--vocab_size", type=int, default=8192, help="BPE vocabulary size (default: %(default)s)")
  p.add_argument("--max_files", type=int, default=None, help="a deterministic subset of about this many files")
  p.add_argument("--overwrite", action="store_true", help="replace an existing corpus at --out")
  args = p.parse_args(argv)
  start = time.time()
  try:
    m = build_corpus(args.out, vocab_size=args.vocab_size, max_files=args.max_files, overwrite=args.overwrite,
                     progress=True, log=lambda msg: print(msg, file=sys.stderr))
  except Dsv4Error as e:
    sys.exit(f"error: {e}")
  print(json.dumps({"out": str(args.out), "files": {s: m["splits"][s]["files"] for s in SPLITS},
                    "bytes": {s: m["splits"][s]["bytes"] for s in SPLITS}, "vocab_size": m["tokenizer"]["vocab_size"],
                    "hash": m["hash"], "seconds": round(time.time() - start, 2)}))


if __name__ == "__main__":
  main()
