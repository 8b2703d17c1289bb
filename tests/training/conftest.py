import pytest

from dsv4.data.corpus import build_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
  """A 40-file slice of the embedded corpus with a 512-token BPE (the tiny target's vocabulary)."""
  out = tmp_path_factory.mktemp("corpus") / "stdlib_v512"
  build_corpus(out, vocab_size=512, max_files=40, log=lambda _: None)
  return out
