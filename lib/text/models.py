"""Encoder classifiers through ``transformers``: the victim, NPoE's trigger-only experts and its gate.

The victim is ``AutoModelForSequenceClassification`` on an encoder (default the offline
MiniLM-L6; the offline ``mpnet-base``, BERT-base's size; the paper's ``bert-base-uncased`` for
users online). A trigger-only expert is the
same encoder cut to its first ``num_hidden_layers`` layers, as the authors build it
(``from_pretrained(name, num_hidden_layers=L)``); the gate is one with ``num_labels = k``, or
(the authors' ``--gate_on_hidden``) a linear layer on the main model's [CLS] state, :class:`HiddenGate`.

A classifier reads only the [CLS] position of its last layer, so :func:`cls_only_last_layer` lets
that layer compute keys and values for every token but queries, attention output and feed-forward
for [CLS] alone: the same logits, and for a one-layer expert about a sixth of its FLOPs. It is
implemented for BERT-style layers (MiniLM, BERT); on other encoders (MPNet, whose attention adds a
relative position bias) ``cls_only`` is ignored: the full last layer gives the same logits.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import pretrained
from ..devices import fast_precision

DEFAULT_ENCODER = pretrained.MINILM
MAX_LENGTH = 256  # the authors' tokenizer max_length


def load_tokenizer(name: str = DEFAULT_ENCODER):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pretrained.encoder_path(name))


def load_classifier(name: str = DEFAULT_ENCODER, num_labels: int = 2, num_hidden_layers: int | None = None,
                    dropout: float = 0.1, seed: int = 0, cls_only: bool = False) -> nn.Module:
    """A pretrained encoder with a fresh classification head (seeded), optionally cut to its first
    layers, its last layer computing [CLS] alone if ``cls_only`` (:func:`cls_only_last_layer`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging

    path = pretrained.encoder_path(name)
    config = AutoConfig.from_pretrained(path, num_labels=num_labels, hidden_dropout_prob=dropout,
                                        attention_probs_dropout_prob=dropout)
    if num_hidden_layers is not None:
        if not 1 <= num_hidden_layers <= config.num_hidden_layers:
            raise ValueError(f"num_hidden_layers must be in [1, {config.num_hidden_layers}] for {name}, "
                             f"got {num_hidden_layers}")
        config.num_hidden_layers = num_hidden_layers
    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the new head's "newly initialized weights" notice is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config)
    finally:
        logging.set_verbosity(verbosity)
    return cls_only_last_layer(model) if cls_only and has_bert_layers(model) else model


def has_bert_layers(model: nn.Module) -> bool:
    """Whether ``model``'s encoder layers are BERT-style (what :func:`cls_only_last_layer` rewrites)."""
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    return layers is not None and hasattr(layers[-1], "feed_forward_chunk")


def cls_only_last_layer(model: nn.Module) -> nn.Module:
    """Make a BERT-style sequence classifier's last layer compute the [CLS] position only (in place).

    Its output is then ``[batch, 1, hidden]``, all that the pooler and the classification head
    read, so the logits equal the full layer's (up to the order of floating-point sums); the
    parameters and the state dict are unchanged. Not for models whose hidden states are read
    beyond [CLS] (``output_hidden_states``)."""
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not hasattr(layers[-1], "feed_forward_chunk"):
        raise TypeError(f"{type(model).__name__} is not a BERT-style encoder classifier")
    layers[-1].forward = _cls_only_forward.__get__(layers[-1])
    return model


def _cls_only_forward(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """BertLayer.forward for the query at position 0: every token's keys and values, and the
    attention function the model is configured with (with its dropout while training)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = layer.attention.self
    b, t, _ = hidden_states.shape
    cls = hidden_states[:, :1]

    def heads(x, n):
        return x.view(b, n, -1, attn.attention_head_size).transpose(1, 2)

    query, key, value = heads(attn.query(cls), 1), heads(attn.key(hidden_states), t), heads(attn.value(hidden_states), t)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1]
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = interface(attn, query, key, value, attention_mask, dropout=attn.dropout.p if attn.training else 0.0,
                       scaling=attn.scaling)
    return layer.feed_forward_chunk(layer.attention.output(out.reshape(b, 1, -1), cls))


class HiddenGate(nn.Module):
    """The authors' ``--gate_on_hidden`` gate: Linear(hidden -> k) on the main model's last [CLS] state.

    It reads the state detached: routing does not train the main model."""

    def __init__(self, hidden_size: int, n_experts: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(hidden_size, n_experts)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.linear(cls_state.detach())


def encode(tokenizer, sentences: list[str], max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Tokenize a batch, padded to its own longest sentence (dynamic padding)."""
    return tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")


class TextClassifier:
    """A trained classifier as the defenses see it: sentences in, class probabilities out."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = MAX_LENGTH, batch_size: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    @property
    def bf16(self) -> bool:
        """Inference in bf16 autocast where the machine's fast precision is bf16 (as training)."""
        return fast_precision(self.device) == "bf16"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def logits(self, sentences: list[str]) -> torch.Tensor:
        self.model.eval()
        sentences = list(sentences)
        order = np.argsort([len(s) for s in sentences])  # similar lengths together: less padding
        out = torch.empty(len(sentences), self.model.config.num_labels)
        for start in range(0, len(sentences), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = encode(self.tokenizer, [sentences[i] for i in idx], self.max_length).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out[torch.as_tensor(idx)] = self.model(**batch).logits.float().cpu()
        return out

    def predict_proba(self, sentences: list[str]) -> np.ndarray:
        return torch.softmax(self.logits(sentences), -1).numpy()

    def predict(self, sentences: list[str]) -> np.ndarray:
        return self.logits(sentences).argmax(-1).numpy()
