"""Triton kernels with PyTorch references; :func:`use_triton` picks Triton on CUDA and the reference elsewhere.

Public entry points (all dispatch automatically; ``backend="triton"|"reference"`` overrides), by module:
``interpolant`` (x_t, and ``seeded_noise``), ``embedding`` (noisy_embedding), ``delta_embedding``
(softmax_embedding), ``cross_entropy`` and ``lagrangian_residual`` (the kernels and references of the two head
losses), ``shared_head`` (the autograd node over both, and the entry points linear_cross_entropy /
lsd_residual_loss); ``noise`` and ``dispatch`` are shared helpers. Imports run one way (no cycle): each module
imports only modules before it in dispatch, noise, interpolant, embedding, cross_entropy, lagrangian_residual,
delta_embedding, shared_head.

- :func:`interpolant` -- x_t = a x0 + b onehot(x1), x0 drawn in the kernel.
- :func:`noisy_embedding` -- (a x0 + b onehot(ids) + c delta) W_in^T without the (B, L, V) state.
- :func:`linear_cross_entropy` -- CE of softmax(cap(h W^T + b)) against ids / soft / teacher targets,
  chunked over V.
- :func:`softmax_embedding` -- softmax(cap(h W_out^T + b)) W_in^T chunked over V (landing points: flow-map
  sampling steps on embeddings, stop-gradient teachers).
- :func:`lsd_residual_loss` -- sum_v (delta + kappa d/dt delta - sg D)^2 from hidden states, chunked over V.
- :func:`shared_head_losses` -- several of those losses (parts of one batch) through one output projection,
  with a single (V, D) weight gradient buffer.
"""

from flowzoo.kernels.cross_entropy import TeacherTarget, linear_argmax, linear_cross_entropy_reference
from flowzoo.kernels.delta_embedding import softmax_embedding, softmax_embedding_reference
from flowzoo.kernels.dispatch import triton_available, use_triton
from flowzoo.kernels.embedding import noisy_embedding, noisy_embedding_reference
from flowzoo.kernels.interpolant import interpolant, interpolant_reference, interpolant_triton, seeded_noise
from flowzoo.kernels.lagrangian_residual import lsd_residual_loss_reference
from flowzoo.kernels.noise import draw_seed, reference_noise
from flowzoo.kernels.shared_head import (
    CrossEntropyPart,
    LagrangianPart,
    linear_cross_entropy,
    lsd_residual_loss,
    shared_head_losses,
)

__all__ = [
    "CrossEntropyPart",
    "LagrangianPart",
    "TeacherTarget",
    "draw_seed",
    "interpolant",
    "interpolant_reference",
    "interpolant_triton",
    "linear_argmax",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "lsd_residual_loss",
    "lsd_residual_loss_reference",
    "noisy_embedding",
    "noisy_embedding_reference",
    "reference_noise",
    "seeded_noise",
    "shared_head_losses",
    "softmax_embedding",
    "softmax_embedding_reference",
    "triton_available",
    "use_triton",
]
