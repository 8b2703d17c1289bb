"""The tokenizer a GGUF file describes, as a HF `tokenizers` Tokenizer, plus its chat template rendered by jinja2.

A GGUF has no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`), the BPE merges, each
token's type (normal / control / user-defined / byte) and the special ids as metadata. For `tokenizer.ggml.model =
gpt2` (byte-level BPE) the tokens are already spelled in GPT-2's byte alphabet, so they form the BPE vocabulary
as they are. What the file names only by a label is the pre-tokenizer (`tokenizer.ggml.pre`): the regex that cuts
text into words before BPE. Each supported label is rebuilt here from llama.cpp's definition of it; an unknown
label is an error, since a wrong split silently changes token ids.

Control tokens (`<|im_start|>`, `<|im_end|>`, …) are added as special tokens so they are matched whole in text, as
llama.cpp and transformers both do.
"""

from __future__ import annotations

import dataclasses

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from dsv4.errors import DataError

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's llama_token_type

# llama.cpp's split regexes for the byte-level vocabularies (by `tokenizer.ggml.pre`).
_GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split(*regexes: str):
  """Isolate each regex's matches in turn, then map bytes to GPT-2's alphabet (no further splitting)."""
  steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
  return pre_tokenizers.Sequence([*steps, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


PRE_TOKENIZERS = {
    "default": lambda: _split(_GPT2_WORDS),
    "gpt-2": lambda: _split(_GPT2_WORDS),
    # SmolLM (and StarCoder-style vocabularies): every digit is its own word, then the GPT-2 split.
    "smollm": lambda: _split(r"\p{N}", _GPT2_WORDS),
    "starcoder": lambda: _split(r"\p{N}", _GPT2_WORDS),
    "llama-bpe": lambda: _split(_LLAMA3_WORDS),
    "llama3": lambda: _split(_LLAMA3_WORDS),
    "qwen2": lambda: _split(_QWEN2_WORDS),
}


class TokenizerError(DataError):
  """GGUF tokenizer metadata dsv4 cannot turn into a tokenizer; the message names the file and key."""


@dataclasses.dataclass
class GGUFTokenizer:
  """A `tokenizers` Tokenizer with the special ids and chat template the GGUF declares."""

  tokenizer: Tokenizer
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  add_bos: bool
  chat_template: str | None

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token(self, i: int | None) -> str | None:
    return None if i is None else self.tokenizer.id_to_token(i)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids; BOS is prepended only when the file says so (`tokenizer.ggml.add_bos_token`)."""
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat template applied to `messages` ([{"role": ..., "content": ...}]), as text."""
    if not self.chat_template:
      raise TokenizerError("this GGUF has no tokenizer.chat_template; pass plain prompts instead of chat messages.")
    return _compiled(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=self.token(self.bos_id) or "",
                                                eos_token=self.token(self.eos_id) or "")

  def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Ids of the rendered chat. The template writes its own special tokens, so none are added."""
    return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)


_TEMPLATES: dict[str, object] = {}


def _compiled(template: str):
  """jinja2 in a sandbox, with the whitespace settings chat templates are written for (trim/lstrip blocks)."""
  if template not in _TEMPLATES:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
      raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    _TEMPLATES[template] = env.from_string(template)
  return _TEMPLATES[template]


def build_tokenizer(fields: dict, where: str) -> GGUFTokenizer:
  """From the `tokenizer.*` metadata (plain Python values, keys as in the file)."""
  kind = fields.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise TokenizerError(f"{where}: tokenizer.ggml.model is {kind!r}; dsv4 builds byte-level BPE ('gpt2') "
                         "tokenizers from GGUF metadata.")
  pre = fields.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise TokenizerError(f"{where}: tokenizer.ggml.pre is {pre!r}, a word split dsv4 does not know; known: "
                         f"{sorted(PRE_TOKENIZERS)}.")
  tokens = fields["tokenizer.ggml.tokens"]
  if "tokenizer.ggml.merges" not in fields:
    raise TokenizerError(f"{where}: tokenizer.ggml.merges is missing; a byte-level BPE needs its merges.")
  merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise TokenizerError(f"{where}: tokenizer.ggml.tokens has duplicate entries.")
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  types = fields.get("tokenizer.ggml.token_type") or [0] * len(tokens)
  tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                          for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL])
  tok.add_tokens([AddedToken(t, normalized=False, special=False)
                  for t, ty in zip(tokens, types, strict=True) if ty == _USER_DEFINED])

  def special(key):
    v = fields.get(f"tokenizer.ggml.{key}")
    return None if v is None else int(v)

  bos, eos = special("bos_token_id"), special("eos_token_id")
  add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
  if add_bos and bos is not None:
    tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
                                                       special_tokens=[(tokens[bos], bos)])
  return GGUFTokenizer(tokenizer=tok, bos_id=bos, eos_id=eos, pad_id=special("padding_token_id"), add_bos=add_bos,
                       chat_template=fields.get("tokenizer.chat_template"))


def tokenizer_from_reader(reader, where: str) -> GGUFTokenizer:
  fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
  return build_tokenizer(fields, where)

