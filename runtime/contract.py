"""The ONNX contract of an edgevae bundle, described once as data.

The exporter builds the graphs from these specs, validates them against these specs, and
writes these specs into ``model.json``; the runtime checks loaded sessions against them and
feeds and reads tensors by these names; README's contract table is written by hand and checked
against these specs by tests/test_docs.py. Symbolic dimensions are named:
``batch`` is dynamic in every graph; the others are fixed per bundle and resolved from the
manifest (``channels``, ``height``, ``width``, ``latent``, ``components``; ``noise`` from the
manifest's ``prior`` section when the bundle has a learned prior).

    encoder.onnx:  images uint8 [batch, channels, height, width]
                   -> mean float32 [batch, latent], logvar float32 [batch, latent]
    decoder.onnx:  latents float32 [batch, latent]
                   -> pixels uint8 [batch, channels, height, width]
                      mixture_logits / mixture_means / mixture_log_scales
                      float32 [batch, components, channels, height, width]
    prior.onnx     (optional) noise float32 [batch, noise] -> latents float32 [batch, latent]

Likelihood (normalized domain, pixel value v sits at x_v = v / 127.5 - 1): component k gives
v the mass sigmoid((x_v + 1/255 - mean_k) / s_k) - sigmoid((x_v - 1/255 - mean_k) / s_k),
s_k = exp(log_scale_k), with the bins of v = 0 and v = 255 extended to -inf and +inf; the
mixture weights are softmax(mixture_logits) over the components axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: Pixel levels of an 8-bit image, and the likelihood's normalized domain: level v sits at
#: v / PIXEL_SCALE - 1, each bin +-1/(PIXEL_LEVELS - 1) wide (the formula above).
PIXEL_LEVELS = 256
PIXEL_SCALE = 127.5
#: Smallest mixture log-scale (normalized domain); the decoder graph clamps its log_scales to it.
MIN_LOG_SCALE = -7.0

#: Identifies a manifest as an edgevae bundle manifest.
MANIFEST_FORMAT = "edgevae-bundle"
#: Version of the manifest schema; bump on any incompatible change.
MANIFEST_VERSION = 1
MANIFEST_FILE = "model.json"

#: Name of the dynamic batch axis in every graph.
BATCH = "batch"

#: Max abs difference allowed between ONNX Runtime and PyTorch at export.
PARITY_TOLERANCE = 1e-4

#: The only likelihood the runtime understands today.
LIKELIHOOD_KIND = "discretized_logistic_mixture"

#: How the likelihood parameters map to pixel values (written into every manifest).
LIKELIHOOD_DOMAIN = (
    "means and log_scales are in the normalized domain where pixel value v sits at v / 127.5 - 1; "
    "each bin is +-1/255 wide around it, the bins of 0 and 255 extend to -inf and +inf"
)

#: ONNX opset the exporter targets.
OPSET = 18


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and (partly symbolic) shape."""

    name: str
    dtype: str
    shape: tuple[str, ...]
    #: Max abs difference between ONNX Runtime and PyTorch that export's parity check allows.
    tolerance: float = PARITY_TOLERANCE

    def resolve(self, dims: Mapping[str, int]) -> list[int | str]:
        """Shape with every fixed symbol replaced by its size; ``batch`` stays symbolic."""
        return [d if d == BATCH else int(dims[d]) for d in self.shape]

    def describe(self, dims: Mapping[str, int]) -> dict[str, object]:
        """JSON form used in the manifest."""
        return {"name": self.name, "dtype": self.dtype, "shape": self.resolve(dims)}


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file name and its inputs and outputs, in order."""

    key: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        """Input names in order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in order."""
        return [t.name for t in self.outputs]

    def describe(self, dims: Mapping[str, int]) -> dict[str, object]:
        """JSON form used in the manifest (without the file hash)."""
        return {
            "file": self.file,
            "inputs": [t.describe(dims) for t in self.inputs],
            "outputs": [t.describe(dims) for t in self.outputs],
        }


_IMAGE = (BATCH, "channels", "height", "width")
_MIXTURE = (BATCH, "components", "channels", "height", "width")

ENCODER = GraphSpec(
    key="encoder",
    file="encoder.onnx",
    inputs=(TensorSpec("images", "uint8", _IMAGE),),
    outputs=(TensorSpec("mean", "float32", (BATCH, "latent")), TensorSpec("logvar", "float32", (BATCH, "latent"))),
)

DECODER = GraphSpec(
    key="decoder",
    file="decoder.onnx",
    inputs=(TensorSpec("latents", "float32", (BATCH, "latent")),),
    outputs=(
        # uint8 pixels may round the other way at a .5 boundary: one level is the honest bound.
        TensorSpec("pixels", "uint8", _IMAGE, tolerance=1.0),
        TensorSpec("mixture_logits", "float32", _MIXTURE),
        TensorSpec("mixture_means", "float32", _MIXTURE),
        TensorSpec("mixture_log_scales", "float32", _MIXTURE),
    ),
)

#: The graphs every bundle has. The bundle fingerprint that containers record covers exactly
#: these (and the codec tables): optional graphs never enter it.
GRAPHS = (ENCODER, DECODER)

#: How a bundle's graphs compute (model.json ``arithmetic``; absent = "float"). "integer" graphs
#: compute with integers only, carried exactly in float32 (every intermediate |value| < 2**24 in any
#: summation order, checked at export), so every engine (onnxruntime's CPU build, its WASM build in
#: a browser, a C loop) returns the same integers: their outputs are the coders' grid indices.
ARITHMETIC_FLOAT = "float"
ARITHMETIC_INTEGER = "integer"
ARITHMETICS = (ARITHMETIC_FLOAT, ARITHMETIC_INTEGER)

# -- the grids of integer graphs (also the grids bitsback rounds float outputs to) -------------
#: Posterior means: i / 2**POSTERIOR_MEAN_BITS, |mean| <= POSTERIOR_MEAN_CLAMP.
POSTERIOR_MEAN_BITS = 10
POSTERIOR_MEAN_CLAMP = 8
#: Posterior log-variances: LOGVAR_RANGE[0] + i / 2**LOGVAR_BITS, within LOGVAR_RANGE.
LOGVAR_BITS = 6
LOGVAR_RANGE = (-24, 8)
#: Latents fed to an integer decoder: z = i / 2**LATENT_INPUT_BITS, |z| <= LATENT_INPUT_CLAMP.
LATENT_INPUT_BITS = 8
LATENT_INPUT_CLAMP = 8
#: Mixture means: level i / MEAN_SUBSTEPS, 0 .. 255.
MEAN_SUBSTEPS = 32
#: Mixture log-scales (normalized domain): LOG_SCALE_RANGE[0] + i / LOG_SCALE_STEPS.
LOG_SCALE_STEPS = 16
LOG_SCALE_RANGE = (int(MIN_LOG_SCALE), 1)
#: Mixture logits: i / LOGIT_STEPS, |logit| <= LOGIT_CLAMP.
LOGIT_STEPS = 16
LOGIT_CLAMP = 32
#: Largest magnitude any value inside an integer graph may reach (float32 holds every integer up to it).
INTEGER_EXACT_LIMIT = 1 << 24


def index_range(name: str) -> tuple[int, int]:
    """Inclusive (low, high) of the integer output or input ``name`` of an integer graph."""
    return {
        "mean_index": (-POSTERIOR_MEAN_CLAMP << POSTERIOR_MEAN_BITS, POSTERIOR_MEAN_CLAMP << POSTERIOR_MEAN_BITS),
        "logvar_index": (0, (LOGVAR_RANGE[1] - LOGVAR_RANGE[0]) << LOGVAR_BITS),
        "latents": (-LATENT_INPUT_CLAMP << LATENT_INPUT_BITS, LATENT_INPUT_CLAMP << LATENT_INPUT_BITS),
        "mixture_mean_index": (0, (PIXEL_LEVELS - 1) * MEAN_SUBSTEPS),
        "mixture_log_scale_index": (0, (LOG_SCALE_RANGE[1] - LOG_SCALE_RANGE[0]) * LOG_SCALE_STEPS),
        "mixture_logit_index": (-LOGIT_CLAMP * LOGIT_STEPS, LOGIT_CLAMP * LOGIT_STEPS),
    }[name]


INTEGER_ENCODER = GraphSpec(
    key="encoder",
    file="encoder.onnx",
    inputs=(TensorSpec("images", "uint8", _IMAGE),),
    outputs=(TensorSpec("mean_index", "int32", (BATCH, "latent"), tolerance=0.0),
             TensorSpec("logvar_index", "int32", (BATCH, "latent"), tolerance=0.0)),
)

INTEGER_DECODER = GraphSpec(
    key="decoder",
    file="decoder.onnx",
    inputs=(TensorSpec("latents", "int32", (BATCH, "latent")),),
    outputs=(
        # the mean of each pixel's heaviest component (first of equal logit indices), rounded:
        # (mixture_mean_index + MEAN_SUBSTEPS // 2) // MEAN_SUBSTEPS
        TensorSpec("pixels", "uint8", _IMAGE, tolerance=0.0),
        TensorSpec("mixture_logit_index", "int32", _MIXTURE, tolerance=0.0),
        TensorSpec("mixture_mean_index", "int32", _MIXTURE, tolerance=0.0),
        TensorSpec("mixture_log_scale_index", "int32", _MIXTURE, tolerance=0.0),
    ),
)


def graphs_for(arithmetic: str) -> tuple[GraphSpec, GraphSpec]:
    """The (encoder, decoder) specs of a bundle whose manifest says ``arithmetic``."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {', '.join(ARITHMETICS)}, got {arithmetic!r}")
    return (INTEGER_ENCODER, INTEGER_DECODER) if arithmetic == ARITHMETIC_INTEGER else GRAPHS


#: Pixel groups of a context bundle (model.json ``pixel_groups``): the image is coded in G groups,
#: one after another; the likelihood of a pixel in group g is conditioned on every pixel of the
#: groups before it (context.onnx), those of group 0 on the latents alone (decoder.onnx). A tile of
#: group numbers repeats over the image: pixel (row, col) is in group tile[row % rows][col % cols].
#: model.json ``pixel_tile`` gives the tile; without it, the default of G below. The default for 4
#: groups codes (0,0), (1,1), (0,1), (1,0) of every 2x2 block: after two groups every remaining
#: pixel has its four direct neighbours known (but the second group sees only diagonal ones).
PIXEL_GROUP_TILES = {1: ((0,),), 2: ((0, 1), (1, 0)), 4: ((0, 2), (3, 1))}
#: Most rows, and most columns, of a ``pixel_tile``; so at most MAX_PIXEL_TILE ** 2 groups.
MAX_PIXEL_TILE = 8
MAX_PIXEL_GROUPS = MAX_PIXEL_TILE ** 2

Tile = tuple[tuple[int, ...], ...]


def pixel_tile(groups: int, tile: Sequence[Sequence[int]] | None = None) -> Tile:
    """The tile of a bundle with ``groups`` pixel groups: ``tile`` (model.json ``pixel_tile``)
    checked, or the default of ``groups``; ValueError naming what is wrong."""
    if not 1 <= groups <= MAX_PIXEL_GROUPS:
        raise ValueError(f"pixel_groups {groups!r} is not an integer in 1..{MAX_PIXEL_GROUPS}")
    if tile is None:
        if groups not in PIXEL_GROUP_TILES:
            raise ValueError(f"pixel_groups {groups!r} needs a pixel_tile (there are defaults for "
                             f"{', '.join(map(str, PIXEL_GROUP_TILES))})")
        return PIXEL_GROUP_TILES[groups]
    rows = tuple(tuple(row) for row in tile)
    if not (1 <= len(rows) <= MAX_PIXEL_TILE and 1 <= len(rows[0]) <= MAX_PIXEL_TILE
            and all(len(row) == len(rows[0]) for row in rows)):
        raise ValueError(f"pixel_tile must be 1..{MAX_PIXEL_TILE} rows of 1..{MAX_PIXEL_TILE} group numbers, "
                         "all rows as long")
    if sorted({g for row in rows for g in row}) != list(range(groups)):
        raise ValueError(f"pixel_tile must hold every group 0..{groups - 1} and no other number")
    return rows


def tile_text(tile: Tile) -> str:
    """A tile as ``edgevae info`` shows it and ``edgevae-train context --tile`` takes it: rows split
    by "/", group numbers by ",", e.g. "0,1/2,3"."""
    return "/".join(",".join(map(str, row)) for row in tile)


def pixel_group_map(groups: int, height: int, width: int,
                    tile: Sequence[Sequence[int]] | None = None) -> "list[list[int]]":
    """The group of every pixel position (row-major lists) under ``pixel_tile(groups, tile)``."""
    rows = pixel_tile(groups, tile)
    return [[rows[r % len(rows)][c % len(rows[0])] for c in range(width)] for r in range(height)]


#: The context graph of a context bundle: the decoder's mixture refined by the pixels known so far.
#: ``known`` is 1 where ``pixels`` holds a decoded pixel and 0 elsewhere (whose pixel value is
#: then ignored); outputs are read only at the positions of the group being coded.
CONTEXT = GraphSpec(
    key="context",
    file="context.onnx",
    inputs=(
        TensorSpec("mixture_logits", "float32", _MIXTURE),
        TensorSpec("mixture_means", "float32", _MIXTURE),
        TensorSpec("mixture_log_scales", "float32", _MIXTURE),
        TensorSpec("pixels", "uint8", _IMAGE),
        TensorSpec("known", "uint8", _IMAGE),
    ),
    outputs=(
        TensorSpec("context_logits", "float32", _MIXTURE),
        TensorSpec("context_means", "float32", _MIXTURE),
        TensorSpec("context_log_scales", "float32", _MIXTURE),
    ),
)


#: The context graph of an integer context bundle: the same job on the integer decoder's grid
#: indices (contract ranges above), returning indices on the same grids; every engine computes the
#: same integers (training/integer_context.py).
INTEGER_CONTEXT = GraphSpec(
    key="context",
    file="context.onnx",
    inputs=(
        TensorSpec("mixture_logit_index", "int32", _MIXTURE),
        TensorSpec("mixture_mean_index", "int32", _MIXTURE),
        TensorSpec("mixture_log_scale_index", "int32", _MIXTURE),
        TensorSpec("pixels", "uint8", _IMAGE),
        TensorSpec("known", "uint8", _IMAGE),
    ),
    outputs=(
        TensorSpec("context_logit_index", "int32", _MIXTURE, tolerance=0.0),
        TensorSpec("context_mean_index", "int32", _MIXTURE, tolerance=0.0),
        TensorSpec("context_log_scale_index", "int32", _MIXTURE, tolerance=0.0),
    ),
)


def context_graph_for(arithmetic: str) -> GraphSpec:
    """The context graph spec of a bundle whose manifest says ``arithmetic``."""
    graphs_for(arithmetic)  # the same check and message
    return INTEGER_CONTEXT if arithmetic == ARITHMETIC_INTEGER else CONTEXT


def coding_graphs(manifest: Mapping[str, Any]) -> tuple[GraphSpec, ...]:
    """The graphs a bundle's codecs compute with, in fingerprint order: encoder and decoder (of its
    arithmetic), then the context graph if the bundle has pixel groups."""
    arithmetic = str(manifest.get("arithmetic", ARITHMETIC_FLOAT))
    graphs = graphs_for(arithmetic)
    return (*graphs, context_graph_for(arithmetic)) if manifest.get("pixel_groups", 1) > 1 else graphs


#: Optional learned prior for sampling: standard normal noise u -> latents z. Bundles without
#: it sample z ~ N(0, I). Not used by the codec, so not part of the fingerprint.
PRIOR = GraphSpec(
    key="prior",
    file="prior.onnx",
    inputs=(TensorSpec("noise", "float32", (BATCH, "noise")),),
    outputs=(TensorSpec("latents", "float32", (BATCH, "latent")),),
)

#: Graphs a bundle may have; each is described in model.json's ``graphs`` only when present.
OPTIONAL_GRAPHS = (PRIOR,)


def dims_of(image_shape: tuple[int, int, int] | list[int], latent: int, components: int,
            noise: int | None = None) -> dict[str, int]:
    """The fixed symbolic dimensions of one bundle (``noise``: its prior's noise size, if any)."""
    c, h, w = image_shape
    dims = {"channels": c, "height": h, "width": w, "latent": latent, "components": components}
    if noise is not None:
        dims["noise"] = noise
    return dims
