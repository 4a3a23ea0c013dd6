"""A PaddlePaddle port of the BERT encoder, written here, that loads Hugging Face's safetensors weights.

The sublayer names follow Hugging Face's ``BertModel`` (``embeddings.LayerNorm``,
``encoder.layer.3.attention.self.query``...), so the routes of a Paddle trace match those of a
PyTorch trace without a layer map. Each sublayer is called the way Hugging Face calls its
counterpart (same positional and keyword arguments, same tuple or dict outputs), so inputs and
outputs align slot by slot.

``bug`` switches on one realistic porting mistake, to show that ``tracespec diff`` names the
sublayer that introduced it:

- ``"transpose"``: one square Linear weight (``encoder.layer.3.attention.output.dense``) is copied
  without the ``[out, in]`` -> ``[in, out]`` transpose; the shapes fit, so nothing complains.
- ``"layernorm-eps"``: one LayerNorm (``encoder.layer.0.attention.output.LayerNorm``) is built with
  Paddle's default epsilon 1e-5 instead of the config's 1e-12.
- ``"padding-idx"``: the word embedding passes ``padding_idx`` the way PyTorch does; but Paddle's
  embedding outputs zeros for that id, while PyTorch looks up the stored row (non-zero in this
  checkpoint), so the padded positions differ.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import paddle
from paddle import nn

__all__ = ["BUGS", "BUG_ROUTES", "BertModel", "load_paddle_bert"]

BUG_ROUTES: Final = {
    "transpose": "encoder.layer.3.attention.output.dense",
    "layernorm-eps": "encoder.layer.0.attention.output.LayerNorm",
    "padding-idx": "embeddings.word_embeddings",
}
"""Each porting bug and the route of the sublayer that introduces it."""

BUGS: Final = tuple(BUG_ROUTES)

_PADDLE_DEFAULT_LAYERNORM_EPS: Final = 1e-5


def _layer_norm(config: dict[str, Any], route: str, bug: str | None) -> nn.LayerNorm:
    wrong = bug == "layernorm-eps" and route == BUG_ROUTES["layernorm-eps"]
    eps = _PADDLE_DEFAULT_LAYERNORM_EPS if wrong else config["layer_norm_eps"]
    return nn.LayerNorm(config["hidden_size"], epsilon=eps)


class BertEmbeddings(nn.Layer):
    def __init__(self, config: dict[str, Any], bug: str | None) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        padding_idx = config["pad_token_id"] if bug == "padding-idx" else None
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden, padding_idx=padding_idx)
        # with Paddle's padding_idx (the bug), the row is zero in the output and the gradient already
        self.pad_token_id = None if bug == "padding-idx" else config["pad_token_id"]
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
        self.LayerNorm = _layer_norm(config, "embeddings.LayerNorm", bug)
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        positions = paddle.arange(config["max_position_embeddings"], dtype="int64").unsqueeze(0)
        self.register_buffer("position_ids", positions, persistable=False)

    def forward(self, input_ids: paddle.Tensor, token_type_ids: paddle.Tensor | None = None) -> paddle.Tensor:
        position_ids = self.position_ids[:, : input_ids.shape[1]]
        if token_type_ids is None:
            token_type_ids = paddle.zeros_like(input_ids)
        words = self.word_embeddings(input_ids)
        if self.pad_token_id is not None:
            # PyTorch's padding_idx keeps the [PAD] row out of the gradient but still looks it up;
            # cutting the gradient at [PAD] positions does the same (found by the backward diff).
            at_pad = (input_ids == self.pad_token_id).unsqueeze(-1)
            words = paddle.where(at_pad, words.detach(), words)
        embeddings = words + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Layer):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.num_attention_heads = config["num_attention_heads"]
        self.attention_head_size = hidden // self.num_attention_heads
        self.scaling = self.attention_head_size**-0.5
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config["attention_probs_dropout_prob"])

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, seq, _ = x.shape
        return x.reshape([batch, seq, self.num_attention_heads, self.attention_head_size]).transpose([0, 2, 1, 3])

    def forward(
        self, hidden_states: paddle.Tensor, attention_mask: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        query = self._heads(self.query(hidden_states))
        key = self._heads(self.key(hidden_states))
        value = self._heads(self.value(hidden_states))
        scores = paddle.matmul(query, key, transpose_y=True) * self.scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = self.dropout(nn.functional.softmax(scores, axis=-1))
        context = paddle.matmul(weights, value).transpose([0, 2, 1, 3])
        batch, seq = hidden_states.shape[:2]
        return context.reshape([batch, seq, -1]), weights


class BertSelfOutput(nn.Layer):
    def __init__(self, config: dict[str, Any], prefix: str, bug: str | None) -> None:
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["hidden_size"])
        self.LayerNorm = _layer_norm(config, f"{prefix}.LayerNorm", bug)
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, hidden_states: paddle.Tensor, input_tensor: paddle.Tensor) -> paddle.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Layer):
    def __init__(self, config: dict[str, Any], prefix: str, bug: str | None) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, f"{prefix}.output", bug)

    def forward(
        self, hidden_states: paddle.Tensor, attention_mask: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        context, weights = self.self(hidden_states, attention_mask=attention_mask)
        return self.output(context, hidden_states), weights


class BertIntermediate(nn.Layer):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["intermediate_size"])
        # Hugging Face's "gelu" is the exact (erf) GELU, Paddle's default.
        self.intermediate_act_fn = nn.GELU()

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Layer):
    def __init__(self, config: dict[str, Any], prefix: str, bug: str | None) -> None:
        super().__init__()
        self.dense = nn.Linear(config["intermediate_size"], config["hidden_size"])
        self.LayerNorm = _layer_norm(config, f"{prefix}.LayerNorm", bug)
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, hidden_states: paddle.Tensor, input_tensor: paddle.Tensor) -> paddle.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertLayer(nn.Layer):
    def __init__(self, config: dict[str, Any], prefix: str, bug: str | None) -> None:
        super().__init__()
        self.attention = BertAttention(config, f"{prefix}.attention", bug)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, f"{prefix}.output", bug)

    def forward(self, hidden_states: paddle.Tensor, attention_mask: paddle.Tensor | None = None) -> paddle.Tensor:
        attention_output, _ = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Layer):
    def __init__(self, config: dict[str, Any], bug: str | None) -> None:
        super().__init__()
        self.layer = nn.LayerList([BertLayer(config, f"encoder.layer.{i}", bug) for i in range(config["num_hidden_layers"])])

    def forward(self, hidden_states: paddle.Tensor, attention_mask: paddle.Tensor | None = None) -> dict[str, paddle.Tensor]:
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask)
        return {"last_hidden_state": hidden_states}


class BertPooler(nn.Layer):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["hidden_size"])
        self.activation = nn.Tanh()

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class BertModel(nn.Layer):
    """The BERT encoder with pooler; ``forward`` takes and returns what Hugging Face's does."""

    def __init__(self, config: dict[str, Any], bug: str | None = None) -> None:
        super().__init__()
        if bug is not None and bug not in BUG_ROUTES:
            raise ValueError(f"unknown bug {bug!r}; choose one of {list(BUG_ROUTES)}")
        self.embeddings = BertEmbeddings(config, bug)
        self.encoder = BertEncoder(config, bug)
        self.pooler = BertPooler(config)

    def forward(
        self,
        input_ids: paddle.Tensor,
        attention_mask: paddle.Tensor | None = None,
        token_type_ids: paddle.Tensor | None = None,
    ) -> dict[str, paddle.Tensor]:
        embedding_output = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = None
        if attention_mask is not None:
            # Additive mask, as Hugging Face builds it: 0 where attended, the dtype's minimum elsewhere.
            keep = attention_mask[:, None, None, :].astype(embedding_output.dtype)
            mask = (1.0 - keep) * float(np.finfo(np.float32).min)
        sequence_output = self.encoder(embedding_output, attention_mask=mask)["last_hidden_state"]
        return {"last_hidden_state": sequence_output, "pooler_output": self.pooler(sequence_output)}


def _paddle_state(model: BertModel, weights: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
    """Hugging Face's tensors renamed and laid out for ``model``: every Linear weight transposed."""
    linear_routes = {route for route, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    state = {}
    for name in model.state_dict():
        array = weights[name]
        route = name.rpartition(".")[0]
        skip_transpose = bug == "transpose" and route == BUG_ROUTES["transpose"]
        if route in linear_routes and name.endswith(".weight") and not skip_transpose:
            array = np.ascontiguousarray(array.T)
        state[name] = array
    return state


def load_paddle_bert(config: dict[str, Any], weights: dict[str, np.ndarray], bug: str | None = None) -> BertModel:
    """The port in eval mode with Hugging Face's ``weights`` (PyTorch layout) loaded."""
    model = BertModel(config, bug)
    state = _paddle_state(model, weights, bug)
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the port: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model


def paddle_inputs(inputs: dict[str, np.ndarray]) -> dict[str, paddle.Tensor]:
    """The tokenized batch as Paddle tensors (keyword arguments of :class:`BertModel`)."""
    return {name: paddle.to_tensor(value) for name, value in inputs.items()}
