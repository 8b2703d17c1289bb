"""The text side of a target, as regenerate sees it: ids of plain and chat prompts, the end-of-turn id, identity.

Two kinds of target tokenizer:
- a `tokenizer.json` (exports, our own BPE): chat rows are rendered by `sources.render_chat` and end with its
  assistant header; EOS is `<|eos|>`;
- a GGUF's tokenizer (dsv4.io.gguf_tokenizer): chat rows are rendered by the model's own chat template with its
  generation prompt (the template writes its special tokens, so none are added); EOS is the file's eos id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dsv4.data.sources import render_chat

EOS = "<|eos|>"
# The header render_chat puts before an assistant reply, derived from it so the two cannot drift apart.
ASSISTANT_HEADER = render_chat([{"role": "assistant", "content": ""}])[0][:-1]


def _prompt_messages(messages) -> list:
  """The turns before the last assistant reply (trailing assistant messages dropped)."""
  render_chat(messages)  # validates every message
  end = len(messages)
  while end and messages[end - 1]["role"] == "assistant":
    end -= 1
  return list(messages[:end])


def chat_prompt(messages) -> str:
  """The text a chat row is prompted with under `render_chat`: turns before the last assistant reply, then the
  assistant header ("" when no turn is left)."""
  kept = _prompt_messages(messages)
  return render_chat(kept)[0] + ASSISTANT_HEADER if kept else ""


class JsonTokenizerText:
  def __init__(self, tokenizer, path: Path | None = None):
    self.tokenizer, self.path = tokenizer, path
    self.eos_id = tokenizer.token_to_id(EOS)
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  def chat_prompt(self, messages) -> str:
    return chat_prompt(messages)

  def encode_batch(self, texts: list[str], chat: list[bool]) -> list[list[int]]:
    del chat  # render_chat writes plain marker text; the tokenizer's own settings apply to every row
    return [e.ids for e in self.tokenizer.encode_batch(texts)]

  def info(self) -> dict:
    data = self.path.read_bytes() if self.path else self.tokenizer.to_str().encode()
    return {"tokenizer": str(self.path.absolute()) if self.path else None,
            "tokenizer_sha256": hashlib.sha256(data).hexdigest()}


class GGUFText:
  def __init__(self, tokenizer, where: str):
    self.tokenizer, self.where = tokenizer, where
    self.eos_id = tokenizer.eos_id
    self.vocab_size = tokenizer.vocab_size

  def chat_prompt(self, messages) -> str:
    kept = _prompt_messages(messages)
    return self.tokenizer.render_chat(kept, add_generation_prompt=True) if kept else ""

  def encode_batch(self, texts: list[str], chat: list[bool]) -> list[list[int]]:
    return [self.tokenizer.encode(t, add_special_tokens=not c) for t, c in zip(texts, chat, strict=True)]

  def info(self) -> dict:
    return {"tokenizer": f"GGUF metadata of {self.where}",
            "tokenizer_sha256": hashlib.sha256(self.tokenizer.tokenizer.to_str().encode()).hexdigest(),
            "chat_template_sha256": hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()}


def as_target_text(tokenizer):
  """Wraps a `tokenizers.Tokenizer` or a GGUF tokenizer; an already wrapped one is returned as is."""
  if isinstance(tokenizer, JsonTokenizerText | GGUFText):
    return tokenizer
  if hasattr(tokenizer, "chat_ids"):
    return GGUFText(tokenizer, "a GGUF")
  return JsonTokenizerText(tokenizer)


__all__ = ["ASSISTANT_HEADER", "EOS", "GGUFText", "JsonTokenizerText", "as_target_text", "chat_prompt"]
