"""Convert a transformers-format model directory to a dsv4 (orbax) checkpoint, or back with --to-hf.

  python scripts/convert_checkpoint.py --src hf_dir --dst runs/ckpt            # HF → dsv4
  python scripts/convert_checkpoint.py --src runs/ckpt --dst hf_out --to-hf    # dsv4 → HF
  python scripts/convert_checkpoint.py --src model.gguf --dst hf_out --to-hf   # GGUF → HF (+ tokenizer)
  python scripts/convert_checkpoint.py --src smollm2-135m-instruct --dst hf_out --to-hf
  python scripts/convert_checkpoint.py --src smollm2-135m-instruct --dst runs/smollm2   # GGUF → dsv4 (orbax)

A GGUF source (a .gguf file or a known model name) is dequantised to float32 with llama.cpp's Q/K permutation
undone; its tokenizer (and, for transformers' format, its chat template) is written next to the weights.
Otherwise the weights keep the dtype the source stores them in (a bf16 export stays bf16 both ways) unless
--dtype asks for another; a tokenizer.json beside them is copied.
"""

import json
import shutil
import sys
import time
from pathlib import Path

from absl import flags

from dsv4 import cli
from dsv4.io.checkpoint import load_model, save_model
from dsv4.io.gguf import GGUFFile
from dsv4.io.gguf import from_pretrained as gguf_from_pretrained
from dsv4.io.gguf_convert import gguf_to_hf_dir
from dsv4.io.gguf_models import MODELS, resolve
from dsv4.io.hf import from_pretrained, save_pretrained
from dsv4.io.storage_dtype import orbax_dtype, safetensors_dtype, with_param_dtype
from dsv4.io.target import is_gguf
from dsv4.parallel import distributed

_SRC = flags.DEFINE_string("src", None, "source directory, .gguf file or known model name (GGUF)")
_DST = flags.DEFINE_string("dst", None, "destination directory (must not exist unless --overwrite)")
_TO_HF = flags.DEFINE_bool("to-hf", False, "dsv4 checkpoint or GGUF → transformers format")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --dst if it exists")
_DTYPE = flags.DEFINE_enum("dtype", "source", ["source", "bfloat16", "float16", "float32"],
                           "storage dtype of the weights written ('source': the one the source stores them in; a "
                           "GGUF is dequantised to float32)")
_START_DISTRIBUTED = cli.multiprocess_flags()
flags.mark_flags_as_required(["src", "dst"])


def _stored_as(model, source_dtype):
  """The model with its parameters in the storage dtype asked for (--dtype), or the source's."""
  dtype = source_dtype if _DTYPE.value == "source" else _DTYPE.value
  return model if dtype is None else with_param_dtype(model, dtype)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag (see --help)")
  _START_DISTRIBUTED()
  to_hf, overwrite = _TO_HF.value, _OVERWRITE.value
  src, dst = Path(_SRC.value), Path(_DST.value)
  gguf = is_gguf(_SRC.value)
  if not src.exists() and not gguf:
    sys.exit(f"error: --src {src}: does not exist (nor is it a known model name: {', '.join(sorted(MODELS))})")
  if dst.exists() and not overwrite:
    sys.exit(f"error: --dst {dst}: exists; pass --overwrite to replace it")
  t0 = time.time()
  if gguf:
    try:
      if to_hf:
        gguf_to_hf_dir(src, dst, overwrite=overwrite)
        layers = json.loads((dst / "config.json").read_text())["num_hidden_layers"]
      else:
        model = gguf_from_pretrained(src)
        save_model(model, dst, overwrite=overwrite)
        tokenizer = GGUFFile(resolve(src)).tokenizer()  # None when the file carries none
        if tokenizer is not None and distributed.is_main():
          tokenizer.tokenizer.save(str(dst / "tokenizer.json"))  # generate.py --checkpoint finds it there
        layers = model.config.num_hidden_layers
    except (ValueError, FileNotFoundError) as e:  # unknown name, missing wheel, bad GGUF: one clear line
      sys.exit(f"error: {e}")
    if distributed.is_main():
      print(json.dumps({"src": str(src), "dst": str(dst), "direction": "gguf->hf" if to_hf else "gguf->dsv4",
                        "num_hidden_layers": layers, "seconds": round(time.time() - t0, 2)}))
    return
  if to_hf:
    model = _stored_as(load_model(src), orbax_dtype(src / "state"))
    if distributed.is_main():  # one writer for plain safetensors files
      save_pretrained(model, dst, overwrite=overwrite)
  else:
    model = _stored_as(from_pretrained(src), safetensors_dtype(src))
    save_model(model, dst, overwrite=overwrite)  # orbax saves collectively across processes
  if not distributed.is_main():
    return
  if (src / "tokenizer.json").is_file():  # the tokenizer travels with the weights, as a GGUF's does
    shutil.copyfile(src / "tokenizer.json", dst / "tokenizer.json")
  print(json.dumps({"src": str(src), "dst": str(dst), "direction": "dsv4->hf" if to_hf else "hf->dsv4",
                    "num_hidden_layers": model.config.num_hidden_layers, "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
  cli.run(main)
