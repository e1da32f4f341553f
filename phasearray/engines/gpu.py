"""GPU engines: the batched reference on CuPy arrays, and a fused CUDA kernel.

``cupy``
    :class:`CupyEngine` runs the array-namespace code of
    :mod:`phasearray.engines.batched` on CuPy arrays: one SGD step is a handful
    of batched matmul and element-wise kernels over all members.
``cupy-fused``
    :class:`CupyFusedEngine` runs ``cuda/sgd_fused.cu``: one warp trains one
    student, keeps its W2 in registers and runs every step of a chunk
    (up to :data:`~phasearray.engines.base.STEP_CHUNK`) in one launch.

Both follow eq. (2.28) of Park et al. 2025 in the order of
:func:`~phasearray.engines.batched.sgd_step`, with minibatch indices made on
the host by :func:`phasearray.schedule.batch_indices`. CuPy is imported only
inside methods, so this module imports anywhere; asking for either engine
where CuPy or a GPU is missing raises
:class:`~phasearray.errors.EngineUnavailableError`. docs/gpu.md describes the
kernel's design.
"""

from __future__ import annotations

import functools
import logging
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import EngineUnavailableError
from .base import Engine, SGDProblem, SGDState, require_W2_only
from .batched import NumpyEngine

__all__ = [
    "KERNEL_SOURCE",
    "CupyEngine",
    "CupyFusedEngine",
    "FusedKernelEngine",
    "KernelConfig",
    "block_layout",
    "cupy_unavailable_reason",
    "fused_shape_problem",
    "kernel_config",
]

logger = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("cuda") / "sgd_fused.cu"

# Activation codes of the kernel's ``ACT`` template parameter.
ACTIVATION_CODES = {"tanh": 0, "relu": 1, "identity": 2}
C_TYPES = {"float64": "double", "float32": "float"}

# NVRTC options: --fmad=false keeps a*b+c as two roundings, as NumPy does,
# except where the kernel writes fma() (the dot products).
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")

# Bounds on the shapes the kernel is instantiated for; beyond them register
# arrays would spill.
MAX_COLUMNS_PER_LANE = 64
MAX_BATCH_SIZE = 64
MAX_OUTPUTS = 8


def cupy_unavailable_reason() -> str | None:
    """Why CuPy cannot run here, or None when it imports and sees a GPU."""
    try:
        import cupy
    except Exception as error:
        return f"CuPy does not import ({type(error).__name__}: {error})"
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return f"CuPy finds no CUDA device ({type(error).__name__}: {error})"
    if n_devices <= 0:
        return "CuPy finds no CUDA device"
    return None


def _require_gpu(name: str) -> None:
    """Raise EngineUnavailableError naming the engine and the reason."""
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise EngineUnavailableError(
            f"engine {name!r} cannot run here: {reason}. It needs CuPy "
            f"(pip install 'phasearray[gpu]') and an NVIDIA GPU; choose engine "
            f"'numba' or 'numpy' instead"
        )


class _CupyArrays:
    """CuPy as the array namespace and the way back to the host."""

    @classmethod
    def is_available(cls) -> bool:
        """True when CuPy imports and sees at least one CUDA device."""
        return cupy_unavailable_reason() is None

    @property
    def xp(self) -> Any:
        import cupy

        return cupy

    def to_host(self, array: Any) -> np.ndarray:
        import cupy

        return cupy.asnumpy(array)


class CupyEngine(_CupyArrays, NumpyEngine):
    """The batched reference engine on CuPy arrays.

    Teachers, data and W2 are copied to the device once per block
    (:meth:`~phasearray.engines.base.Engine.start`); each chunk of steps
    copies its minibatch indices. Every step launches a few batched kernels,
    so it suits checking the fused engine more than speed.

    Raises
    ------
    EngineUnavailableError
        On construction, where CuPy does not import or sees no GPU.
    """

    name: ClassVar[str] = "cupy"

    def __init__(self) -> None:
        _require_gpu(self.name)


@dataclass(frozen=True)
class KernelConfig:
    """One instantiation of the fused kernel's template.

    Attributes
    ----------
    dtype : {"float64", "float32"}
    n1, n2, n3 : int
        Widths of the first hidden layer, the trained layer and the output.
    batch_size : int
        |B|.
    activation : {"tanh", "relu", "identity"}
    warps : int
        Students (warps) per thread block; they share one stream.
    """

    dtype: str
    n1: int
    n2: int
    n3: int
    batch_size: int
    activation: str
    warps: int

    @property
    def threads(self) -> int:
        return 32 * self.warps

    @property
    def template_arguments(self) -> tuple[str, ...]:
        return (
            C_TYPES[self.dtype],
            str(self.n1),
            str(self.n2),
            str(self.n3),
            str(self.batch_size),
            str(ACTIVATION_CODES[self.activation]),
            str(self.warps),
        )

    @property
    def name_expression(self) -> str:
        """The kernel's name as NVRTC instantiates it."""
        return f"sgd_fused<{', '.join(self.template_arguments)}>"


def fused_shape_problem(n1: int, n2: int, n3: int, batch_size: int) -> str | None:
    """Why the fused kernel cannot train this shape, or None when it can.

    Parameters
    ----------
    n1, n2, n3 : int
        Widths of the first hidden, trained hidden and output layers.
    batch_size : int
        Minibatch size |B|.
    """
    if n2 > 32 or 32 % n2:
        return (
            f"engine 'cupy-fused' needs the trained layer's width n2 to divide 32, "
            f"got n2={n2}; use engine 'cupy' or 'numba' instead"
        )
    columns = -(-n1 // (32 // n2))
    if columns > MAX_COLUMNS_PER_LANE:
        return (
            f"engine 'cupy-fused' keeps at most {MAX_COLUMNS_PER_LANE} columns of W2 "
            f"per lane, got n1={n1} with n2={n2}; use engine 'cupy' instead"
        )
    if batch_size > MAX_BATCH_SIZE or n3 > MAX_OUTPUTS:
        return (
            f"engine 'cupy-fused' handles batch_size <= {MAX_BATCH_SIZE} and "
            f"n3 <= {MAX_OUTPUTS}, got batch_size={batch_size}, n3={n3}; "
            f"use engine 'cupy' instead"
        )
    return None


def kernel_config(problem: SGDProblem, warps: int) -> KernelConfig:
    """The kernel instantiation for a block's problem; check the shape fits.

    Raises
    ------
    NotImplementedError
        The widths or batch size are outside what the kernel handles
        (:func:`fused_shape_problem`).
    """
    n1 = problem.phi1.shape[2]
    n3, n2 = problem.W3.shape[1:]
    reason = fused_shape_problem(n1, n2, n3, problem.batch_size)
    if reason is not None:
        raise NotImplementedError(reason)
    return KernelConfig(
        dtype=problem.dtype,
        n1=int(n1),
        n2=int(n2),
        n3=int(n3),
        batch_size=int(problem.batch_size),
        activation=problem.activation,
        warps=int(warps),
    )


def block_layout(
    member_stream: np.ndarray, warps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Group members into thread blocks of ``warps`` students of one stream.

    Members of a stream share their minibatches, so a block stages each
    step's rows once for all its warps.

    Parameters
    ----------
    member_stream : (M,) int
        Stream of each member.
    warps : int
        Students per block.

    Returns
    -------
    block_stream : (n_blocks,) int32
    block_members : (n_blocks, warps) int32
        Member of each warp, -1 where a block has fewer members than warps.

    Examples
    --------
    >>> streams, members = block_layout(np.array([1, 0, 1, 1]), warps=2)
    >>> streams.tolist(), members.tolist()
    ([0, 1, 1], [[1, -1], [0, 2], [3, -1]])
    """
    streams, blocks = [], []
    for stream in np.unique(member_stream):
        members = np.flatnonzero(member_stream == stream)
        for first in range(0, members.size, warps):
            row = np.full(warps, -1, dtype=np.int32)
            chunk = members[first : first + warps]
            row[: chunk.size] = chunk
            streams.append(stream)
            blocks.append(row)
    block_stream = np.asarray(streams, dtype=np.int32)
    block_members = np.asarray(blocks, dtype=np.int32).reshape(-1, warps)
    return block_stream, block_members


class FusedKernelEngine(Engine):
    """The fused kernel's host side, independent of how the kernel is run.

    Subclasses say where arrays live (:attr:`xp`) and how one launch is made
    (:meth:`_launch`). :class:`CupyFusedEngine` launches through CuPy; the
    tests run the same kernel source on the CPU through a host emulation.

    Parameters
    ----------
    warps_per_block : int
        Students per thread block (default 4).
    """

    def __init__(self, warps_per_block: int = 4) -> None:
        if warps_per_block < 1 or warps_per_block > 32:
            raise ValueError(
                f"warps_per_block must be in 1..32, got {warps_per_block!r}"
            )
        self.warps_per_block = warps_per_block

    def start(
        self,
        problem: SGDProblem,
        W2: np.ndarray,
        trained: dict[str, np.ndarray] | None = None,
    ) -> SGDState:
        """Move a block to the device and plan its thread blocks."""
        require_W2_only(problem, self.name)
        config = kernel_config(problem, self.warps_per_block)
        state = super().start(problem, W2)
        xp, arrays = self.xp, state.arrays

        for name in ("phi1", "y", "W3", "step_size"):
            arrays[name] = xp.ascontiguousarray(arrays[name])
        block_stream, block_members = block_layout(
            np.asarray(problem.member_stream), config.warps
        )
        arrays["block_stream"] = xp.asarray(block_stream)
        arrays["block_members"] = xp.asarray(block_members)
        arrays["kernel_config"] = config
        logger.debug(
            "fused kernel %s: %d blocks of %d threads",
            config.name_expression,
            block_stream.size,
            config.threads,
        )
        return state

    def _run_chunk(self, state: SGDState, indices: np.ndarray) -> None:
        arrays = state.arrays
        n_steps = int(indices.shape[1])
        device_indices = self.xp.asarray(np.ascontiguousarray(indices, dtype=np.int32))
        arguments = (
            state.W2,
            arrays["phi1"],
            arrays["y"],
            arrays["W3"],
            arrays["step_size"],
            device_indices,
            arrays["block_stream"],
            arrays["block_members"],
            np.int32(state.problem.n_train),
            np.int32(n_steps),
        )
        n_blocks = int(arrays["block_stream"].shape[0])
        self._launch(arrays["kernel_config"], n_blocks, arguments)

    @abstractmethod
    def _launch(self, config: KernelConfig, n_blocks: int, arguments: tuple) -> None:
        """Run the kernel ``config`` on ``n_blocks`` blocks with ``arguments``."""


class CupyFusedEngine(_CupyArrays, FusedKernelEngine):
    """The fused CUDA kernel through CuPy (NVRTC-compiled on first use).

    Parameters
    ----------
    warps_per_block : int
        Students per thread block (default 4).

    Raises
    ------
    EngineUnavailableError
        On construction, where CuPy does not import or sees no GPU.
    """

    name: ClassVar[str] = "cupy-fused"

    def __init__(self, warps_per_block: int = 4) -> None:
        _require_gpu(self.name)
        super().__init__(warps_per_block)

    def _launch(self, config: KernelConfig, n_blocks: int, arguments: tuple) -> None:
        kernel = _compiled_kernel(config)
        kernel((n_blocks,), (config.threads,), arguments)


@functools.cache
def _compiled_kernel(config: KernelConfig) -> Any:
    """The CuPy RawKernel of one instantiation, compiled once per process."""
    import cupy

    module = cupy.RawModule(
        code=KERNEL_SOURCE.read_text(),
        options=NVRTC_OPTIONS,
        name_expressions=[config.name_expression],
    )
    logger.debug("compiled %s", config.name_expression)
    return module.get_function(config.name_expression)
