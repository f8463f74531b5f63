"""AdaEAGLE's Lightweight Draft Length Predictor, LDLP (docs/design.md 4.4): how many tokens to draft next.

The decision is made at the last accepted token x_j, the last position whose target feature exists, from
the target's own quantities there (the paper's inputs) and the draft head's confidence in its first token:

    x = concat(norm(concat(embed(x_j), f_j)), c)      # embedding and final-norm feature [2 dim], then c:
                                                      # the head's top-1 probability for the root's child
    h = silu(w_in(x));  h = h + silu(w_mid(h))        # [.., hidden]: 3 layers, the middle one residual
    length = round(w_out(h)) clipped to [0, k_max]    # draft a chain of that many tokens; 0: a plain step

Rounding is the paper's rule, and it ignores what drafting costs on the machine at hand. A predictor file may also
carry a LengthTable: on held-out positions, bins of the raw output and how often each label fell in each bin.
Given the machine's measured step costs (planner.policy.best_chain_lengths) that table gives each bin the length
that maximises tokens per second; the decoder then maps the raw output to its bin's length (`bin_lengths`).

c costs nothing: the drafter has computed the root's children before the length is chosen. It is not in the
paper; with the paper's two inputs alone the predictor chose worse lengths here (docs/notes.md, "Draft-length
predictor (LDLP)").

Decoding asks for one position per step: OnePositionPredictor runs the same function in numpy with the LayerNorm's
affine folded into the first layer, ~4x faster than the module there (torch's per-op overhead dominates an MLP
this small: ~150-190 us against 40-60 us on Zen 3, where a plain step of the embedded model takes ~13 ms).

Its file (drafters.weights_file: safetensors, no pickle) holds the config, the float32 weights and free-form
metadata (the command that trained it).
"""
import bisect
import math
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from specdec_kernels.tree import MAX_TREE_NODES

from .head_file import shipped_file
from .weights_file import assign_weights, config_from, read_weights_file, save_weights_file

MAX_DRAFT_LENGTH = MAX_TREE_NODES - 1  # a chain of k drafts is a tree of k + 1 nodes, root included
PREDICTOR_SUFFIX = ".ldlp.safetensors"


def check_k_max(k_max: int) -> int:
    if not 1 <= k_max <= MAX_DRAFT_LENGTH:
        raise ValueError(f"k_max must be in [1, {MAX_DRAFT_LENGTH}] (a chain draft of k_max tokens), got {k_max}")
    return k_max


@dataclass(frozen=True)
class PredictorConfig:
    dim: int              # the target's hidden size: each of the two inputs has this width
    k_max: int            # the longest chain the predictor may ask for
    hidden_dim: int = 64

    def __post_init__(self):
        check_k_max(self.k_max)
        if self.dim < 1 or self.hidden_dim < 1:
            raise ValueError(f"a length predictor needs dim >= 1 and hidden_dim >= 1, got {self}")


@dataclass(frozen=True)
class LengthTable:
    """The raw output's bins, split at `edges` (ascending; bin b holds edges[b - 1] <= raw < edges[b]), and per
    bin how many held-out positions had each label 0 .. k_max (`counts` [bins][k_max + 1])."""

    edges: Tuple[float, ...]
    counts: Tuple[Tuple[int, ...], ...]

    def __post_init__(self):
        widths = {len(row) for row in self.counts}
        if (len(self.counts) != len(self.edges) + 1 or len(widths) != 1 or min(widths) < 2
                or any(n < 0 for row in self.counts for n in row) or sum(map(sum, self.counts)) == 0
                or not all(math.isfinite(e) for e in self.edges) or list(self.edges) != sorted(self.edges)):
            raise ValueError(f"a length table needs ascending finite edges, one more row of counts than edges, rows "
                             f"of k_max + 1 non-negative counts and some positions, got {self}")

    @staticmethod
    def of(raw: torch.Tensor, labels: torch.Tensor, k_max: int, bins: int = 8) -> "LengthTable":
        """The table of raw outputs [N] and their labels [N] (0 .. k_max; more counts as k_max): `bins` bins of about
        equal counts (fewer where the raw outputs repeat), none empty."""
        quantiles = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
        edges = torch.quantile(raw.double(), quantiles).unique()
        index = torch.bucketize(raw.double(), edges, right=True)
        counts = torch.zeros(edges.numel() + 1, k_max + 1, dtype=torch.int64)
        counts.index_put_((index, labels.clamp(0, k_max)), torch.ones_like(labels), accumulate=True)
        kept = counts.sum(1).nonzero()[:, 0].tolist()  # an empty bin joins the next one (the last: the one before)
        return LengthTable(tuple(edges[b - 1].item() for b in kept[1:]), tuple(tuple(counts[b].tolist()) for b in kept))

    def bin_of(self, raw: float) -> int:
        return bisect.bisect_right(self.edges, raw)


class LengthPredictor(nn.Module):
    """The LDLP in plain PyTorch: (embeds, features) [.., dim] each -> a real-valued draft length [..]."""

    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(2 * config.dim)  # embeddings and features differ in scale (~15x: SmolLM2)
        self.w_in = nn.Linear(2 * config.dim + 1, config.hidden_dim)
        self.w_mid = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.w_out = nn.Linear(config.hidden_dim, 1)
        # Decoding policies, not learned (not saved). min_length floors rounded lengths (methods.ADA_MIN_LENGTH);
        # bin_lengths, when set (methods.Decoder, from the machine's costs), replaces rounding: the length of the raw
        # output's bin in length_table (which the file may carry).
        self.min_length = 0
        self.length_table: Optional[LengthTable] = None
        self.bin_lengths: Optional[Tuple[int, ...]] = None

    def forward(self, embeds: torch.Tensor, features: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """embeds, features [.., dim], confidence [..] -> the real-valued length (what training's loss sees)."""
        if embeds.shape[-1] != self.config.dim or features.shape[-1] != self.config.dim:
            raise ValueError(f"the predictor takes embeddings and features of width {self.config.dim}, got "
                             f"{embeds.shape[-1]} and {features.shape[-1]}")
        if confidence.shape != embeds.shape[:-1]:
            raise ValueError(f"one confidence per position: expected shape {tuple(embeds.shape[:-1])}, got "
                             f"{tuple(confidence.shape)}")
        x = self.norm(torch.cat([embeds, features.to(embeds.dtype)], -1))
        h = F.silu(self.w_in(torch.cat([x, confidence.to(x.dtype)[..., None]], -1)))
        h = h + F.silu(self.w_mid(h))
        return self.w_out(h).squeeze(-1)

    @torch.no_grad()
    def lengths(self, embeds: torch.Tensor, features: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """Draft lengths int64 [..] in [0, k_max] (rounded: [min_length, k_max]); 0 means a plain decoding step."""
        raw = self(embeds, features, confidence)
        if self.bin_lengths is not None:
            bins = torch.bucketize(raw.double(), torch.tensor(self.length_table.edges, dtype=torch.float64), right=True)
            return torch.tensor(self.bin_lengths)[bins]
        return to_length(raw, self.config.k_max).clamp(min=self.min_length)


class OnePositionPredictor:
    """A snapshot of `predictor` for one position at a time: (embed, feature) [dim] each and the confidence ->
    the same int length as predictor.lengths up to float32 rounding (a raw value within ~1e-5 of a half may round
    the other way: the draft length changes, never the output). Its weights are copied when it is made; numpy
    calls cost ~1 us each here, so the inputs go into one preallocated row, the confidence and a 1 for the bias
    at its end, and each layer is one matrix-vector product."""

    def __init__(self, predictor: LengthPredictor):
        dims = self.dims = 2 * predictor.config.dim
        w_in, b_in = (t.detach().double().numpy() for t in (predictor.w_in.weight, predictor.w_in.bias))
        scale, shift = (t.detach().double().numpy() for t in (predictor.norm.weight, predictor.norm.bias))
        # norm(x) = x_hat * scale + shift, so w_in @ [norm(x), c] + b_in
        #   = [w_in * scale, w_c, w_in @ shift + b_in] @ [x_hat, c, 1]
        self.w_in = np.concatenate([w_in[:, :dims] * scale, w_in[:, dims:], (w_in[:, :dims] @ shift + b_in)[:, None]],
                                   1).astype(np.float32)
        self.w_mid = torch.cat([predictor.w_mid.weight, predictor.w_mid.bias[:, None]], 1).detach().float().numpy()
        self.w_out = torch.cat([predictor.w_out.weight[0], predictor.w_out.bias]).detach().float().numpy()
        self.eps, self.k_max, self.min_length = predictor.norm.eps, predictor.config.k_max, predictor.min_length
        self.table, self.bin_lengths = predictor.length_table, predictor.bin_lengths
        self.row = np.ones(dims + 2, np.float32)              # [x, c, 1]
        self.hidden = np.ones(predictor.config.hidden_dim + 1, np.float32)  # [h, 1]
        self.scratch = np.empty(predictor.config.hidden_dim, np.float32)

    def __call__(self, embed: torch.Tensor, feature: torch.Tensor, confidence: float) -> int:
        row, x, h = self.row, self.row[: self.dims], self.hidden[:-1]
        row[: embed.shape[0]] = embed.float().numpy()
        row[embed.shape[0]: self.dims] = feature.float().numpy()
        np.subtract(x, np.float32(float(x.sum()) / x.size), out=x)
        np.multiply(x, np.float32(1 / math.sqrt(float(x @ x) / x.size + self.eps)), out=x)
        row[self.dims] = confidence
        np.matmul(self.w_in, row, out=h)
        h[:] = self._silu(h)
        h += self._silu(self.w_mid @ self.hidden)
        raw = float(self.w_out @ self.hidden)
        if self.bin_lengths is not None:
            return self.bin_lengths[self.table.bin_of(raw)]
        return max(min(max(round(raw), 0), self.k_max), self.min_length)  # round: half to even, as to_length

    def _silu(self, v: np.ndarray) -> np.ndarray:
        """silu(v) = v * (1 + tanh(v / 2)) / 2, into the scratch row (no overflow for large |v|, unlike exp)."""
        t = self.scratch
        np.multiply(v, 0.5, out=t)
        np.tanh(t, out=t)
        t += 1
        t *= 0.5
        t *= v
        return t


def to_length(raw: torch.Tensor, k_max: int) -> torch.Tensor:
    """Real-valued lengths -> int64 lengths: rounded (half to even, as torch.round) and clipped to [0, k_max]."""
    return raw.round().clamp(0, k_max).long()


# ---------------------------------------------------------------- the file
def default_predictor_path(model_path: str) -> str | None:
    """The shipped predictor for a GGUF file (heads/<file name>.ldlp.safetensors), or None when there is none."""
    return shipped_file(model_path, PREDICTOR_SUFFIX)


def save_predictor(predictor: LengthPredictor, path: str, **metadata) -> None:
    if predictor.length_table is not None:
        metadata["length_table"] = asdict(predictor.length_table)
    save_weights_file(path, predictor.state_dict(), asdict(predictor.config), metadata)


def load_predictor(path: str, target) -> LengthPredictor:
    """The predictor in `path` for `target` (a models.Transformer); ValueError when the file is damaged or the
    predictor was trained for another hidden size. The saved metadata is on `predictor.metadata`."""
    tensors, config, metadata = read_weights_file(path)
    config = config_from(PredictorConfig, config, path)
    if config.dim != target.config.dim:
        raise ValueError(f"{path} is a length predictor for dim {config.dim}, the target has dim {target.config.dim}")
    with torch.device("meta"):  # sized by the config: nothing is allocated before the file's tensors match it
        predictor = LengthPredictor(config)
    assign_weights(predictor, tensors, torch.float32, path)
    predictor.metadata = metadata
    if "length_table" in metadata:
        predictor.length_table = table_from(metadata["length_table"], config.k_max, path)
    return predictor.eval()


def table_from(entry, k_max: int, path: str) -> LengthTable:
    """The LengthTable of a file's metadata; ValueError when it is damaged or for another k_max."""
    try:
        table = LengthTable(tuple(float(e) for e in entry["edges"]),
                            tuple(tuple(int(n) for n in row) for row in entry["counts"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: damaged length table ({error})") from None
    if len(table.counts[0]) != k_max + 1:
        raise ValueError(f"{path}: the length table counts labels 0..{len(table.counts[0]) - 1}, the predictor's "
                         f"k_max is {k_max}")
    return table
