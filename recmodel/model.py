"""The two-tower sequential recommender (PyTorch).

* Item tower: a learned ID embedding (one row per vocabulary slot) plus a projection of the item's
  frozen text embedding; the sum is L2-normalised. A brand-new item has a near-zero ID row, so its
  vector comes from its text.
* User encoder: a causal transformer over the last ``max_len`` interactions. Each position carries the
  item vector, an event-type embedding, a time-gap bucket embedding (time until the next interaction,
  or until "now" for the most recent one) and a position embedding. Sequences are left-padded so the
  most recent interaction sits at position ``max_len - 1``; its output, L2-normalised, is the user
  vector. Score = dot product (cosine); training divides by ``temperature``.

The user encoder takes item *vectors*, not ids, so the exported ONNX graph does not depend on the
catalog size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from recmodel.features import N_EVENT_TYPES, N_GAP_BUCKETS, event_type_id, gap_buckets

__all__ = ["SequentialRecommender", "UserEncoder", "ItemTower", "event_type_id", "gap_buckets"]

class ByteDropout(nn.Module):
    """Inverted dropout that draws one random byte per element: the drop probability is rounded to a
    multiple of 1/256 (0.2 -> 51/256) and the kept values are scaled by the exact inverse keep share.

    torch's CPU dropout draws a Bernoulli sample per element: at the recipe's sizes its ``bernoulli_`` was
    19 % of a training step's CPU (torch.profiler, 2 threads). Here eight mask bytes come from each 64-bit
    draw and the mask is the scaled float multiplier, and ``streamrec bench model`` trains 16-20 % more
    events/s on 2 cores. On a GPU torch's own kernel is already cheap and is used. Identity outside
    training, so the ONNX export never sees it.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.threshold = int(round(p * 256))  # drop when a byte is below it
        self.scale = 256.0 / (256 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.threshold / 256, True)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(self.scale)


class _CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = ByteDropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        head = dim // self.n_heads
        q, k, v = self.qkv(x).reshape(b, length, 3, self.n_heads, head).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(head)) + bias
        att = self.dropout(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, length, dim)
        return self.out(y)


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _CausalSelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = ByteDropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln1(x), bias))
        return x + self.dropout(self.ff(self.ln2(x)))


class UserEncoder(nn.Module):
    """(item vectors [B,L,D], type ids [B,L], gap buckets [B,L], mask [B,L] bool) -> outputs.

    ``forward`` returns the L2-normalised user vector [B,D] (output at the last position);
    ``sequence`` returns normalised outputs at every position [B,L,D] for training.
    """

    def __init__(self, *, dim: int, max_len: int, n_heads: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.max_len = max_len
        self.item_proj = nn.Linear(dim, dim)
        self.type_emb = nn.Embedding(N_EVENT_TYPES, dim)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, dim)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, n_heads, dropout) for _ in range(n_layers))
        self.ln = nn.LayerNorm(dim)
        self.dropout = ByteDropout(dropout)
        for emb in (self.type_emb, self.gap_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)  # small, so the item signal dominates at the start
        self.item_scale = math.sqrt(dim)  # item vectors are unit-norm; bring entries to ~unit scale
        causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)
        self.register_buffer("positions", torch.arange(max_len), persistent=False)

    def sequence(
        self, item_vecs: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        length = item_vecs.shape[1]
        x = self.item_proj(item_vecs * self.item_scale) + self.type_emb(types) + self.gap_emb(gaps)
        x = x + self.pos_emb(self.positions[self.max_len - length :])
        x = self.dropout(x) * mask.unsqueeze(-1).to(x.dtype)
        allowed = self.causal[self.max_len - length :, self.max_len - length :].unsqueeze(0) & mask.unsqueeze(1)
        # Finite fill keeps fully padded rows finite (their outputs are never used).
        bias = torch.where(allowed, 0.0, -1e9).to(x.dtype).unsqueeze(1)
        for block in self.blocks:
            x = block(x, bias)
        return F.normalize(self.ln(x), dim=-1)

    def forward(
        self, item_vecs: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return self.sequence(item_vecs, types, gaps, mask)[:, -1, :]


class ItemTower(nn.Module):
    def __init__(self, *, capacity: int, dim: int, text_dim: int, use_text: bool, id_dropout: float = 0.0) -> None:
        super().__init__()
        self.use_text = use_text
        # While training, this fraction of item lookups uses the text projection alone (gate 0), as a
        # brand-new item does: the text tower keeps learning to stand in for the ID row of warm items,
        # which it otherwise hardly would once their gates are near 1.
        self.id_dropout = id_dropout
        self.id_emb = nn.Embedding(capacity + 1, dim)
        nn.init.normal_(self.id_emb.weight, std=0.01)
        self.register_buffer("text_table", torch.zeros(capacity + 1, text_dim))
        # Weight of the ID embedding per slot, n / (n + prior) for an item with n training targets (set by
        # the trainer); the text projection gets the rest. An item nobody has touched is placed by its text
        # alone, a well-known one by its own learnt row alone, so the text tower carries cold items
        # without pulling warm ones towards their genre.
        self.register_buffer("id_gate", torch.ones(capacity + 1))
        self.text_proj = (
            nn.Sequential(nn.Linear(text_dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) if use_text else None
        )

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        vec = self.id_emb(slots)
        if self.text_proj is not None:
            gate = self.id_gate[slots].unsqueeze(-1)
            if self.training and self.id_dropout > 0:
                gate = gate * (torch.rand(gate.shape, device=gate.device) >= self.id_dropout).to(gate.dtype)
            vec = vec * gate + self.text_proj(self.text_table[slots]) * (1.0 - gate)
        return F.normalize(vec, dim=-1)


class SequentialRecommender(nn.Module):
    """Item tower + user encoder. Hyperparameters are stored under their keyword names."""

    def __init__(
        self,
        *,
        capacity: int,
        dim: int = 64,
        max_len: int = 50,
        text_dim: int = 384,
        use_text: bool = True,
        n_heads: int = 2,
        n_layers: int = 2,
        dropout: float = 0.0,
        temperature: float = 0.1,
        seed: int = 0,
        id_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.dim = dim
        self.max_len = max_len
        self.text_dim = text_dim
        self.use_text = use_text
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.dropout = dropout
        self.temperature = temperature
        self.seed = seed
        self.id_dropout = id_dropout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.items = ItemTower(capacity=capacity, dim=dim, text_dim=text_dim, use_text=use_text, id_dropout=id_dropout)
            self.user_encoder = UserEncoder(
                dim=dim, max_len=max_len, n_heads=n_heads, n_layers=n_layers, dropout=dropout
            )

    def hyperparameters(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("capacity", "dim", "max_len", "text_dim", "use_text", "n_heads", "n_layers", "dropout", "temperature", "seed", "id_dropout")
        }

    def encode(self, slots: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User vectors [B,D] from left-padded slot sequences."""
        return self.user_encoder(self.items(slots), types, gaps, mask)
