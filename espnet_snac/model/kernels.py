"""Fused CPU kernels of the inference fast path (``csrc/``), compiled on first use.

Decoder (``snake.c``): each residual unit's Snake + depthwise conv in one pass over L1-sized tiles,
and a lone Snake in one pass, with the compiler's vectorised sine (3-4x faster per call than the
torch ops; rounding differs by about 1e-6, which the decoder allows). Encoder (``exact.c``): the
depthwise convolutions and Snakes rounded exactly like torch's, because codes must not move:
:class:`ExactDepthwise` learns oneDNN's tap order per layer shape from a probe, :class:`ExactSnake`
calls the sine torch itself uses (MKL's ``vsSin``) after checking it against ``torch.sin``, and
:class:`ExactPointwise` runs kernel-1 convolutions as oneDNN's FMA chain over the input channels,
with the order decided per exact shape against ``F.conv1d``.

The sources are built with the system C compiler (``$CC``, else ``cc`` / ``gcc``: about a second,
no torch headers) into a cache keyed by the sources, the compiler and the CPU, and loaded with
ctypes; OpenMP threads follow ``torch.get_num_threads()``. Without a compiler, or with
``ESPNET_SNAC_NATIVE=0``, the fast path uses torch ops instead; :func:`status` says which and why.
The cache directory is ``$ESPNET_SNAC_CACHE``, else ``$XDG_CACHE_HOME/espnet_snac``, else
``~/.cache/espnet_snac``; a directory we cannot write falls back to a private temporary one.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# Each source with its own flags: the decoder's kernels may round freely (-ffast-math lets glibc's
# libmvec vectorise sinf); the encoder's must not (IEEE operations only, no contraction to FMA).
SOURCES: Dict[str, Sequence[str]] = {
    "snake.c": ("-ffast-math",),
    "exact.c": ("-fno-fast-math", "-ffp-contract=off"),
}
# (compile flags, link flags), tried in order; the first set that builds is used. x86 with AVX-512
# prefers 512-bit vectors. Compiling and linking are separate steps on purpose: linking with
# -ffast-math adds crtfastmath.o (GCC < 13), whose constructor would switch the whole process to
# flush denormals to zero when the library loads, changing every other computation.
FLAG_SETS: Sequence[Tuple[Sequence[str], Sequence[str]]] = (
    (("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"), ("-fopenmp", "-lmvec", "-lm")),
    (("-O3", "-march=native", "-fopenmp"), ("-fopenmp", "-lm")),
    (("-O3", "-fopenmp"), ("-fopenmp", "-lm")),
)
MAX_HALO = 1024  # csrc/tiles.h: widest depthwise halo (K // 2 * dilation) the fused kernels take

_lib: Optional[ctypes.CDLL] = None
_status: Optional[str] = None
_lock = threading.Lock()


def compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    if os.environ.get("ESPNET_SNAC_CACHE"):
        return Path(os.environ["ESPNET_SNAC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "espnet_snac"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    wanted = ("model name", "flags", "Features", "CPU part")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.split(":")[0].strip() in wanted]
        return "\n".join(dict.fromkeys(lines))  # one copy per distinct line (cores repeat them)
    except OSError:
        return platform.processor() or platform.machine()


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _run(cmd: Sequence[str]) -> Optional[str]:
    """Run one build command; its error (the tail of stderr), or None if it succeeded."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{' '.join(cmd)}: {exc}"
    return f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}" if done.returncode else None


def _compile(cc: str, target: Path) -> None:
    """Compile SOURCES into ``target``, atomically (linked to a temporary name, then renamed)."""
    errors = []
    with tempfile.TemporaryDirectory(prefix="espnet_snac_build_") as build:
        for compile_flags, link_flags in FLAG_SETS:
            objects = [os.path.join(build, name + ".o") for name in SOURCES]
            error = None
            for (name, own_flags), obj in zip(SOURCES.items(), objects):
                error = _run([cc, "-c", "-fPIC", str(CSRC / name), "-o", obj, *compile_flags, *own_flags])
                if error:
                    break
            if error is None:
                tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
                error = _run([cc, "-shared", *objects, "-o", str(tmp), *link_flags])
                if error is None:
                    os.replace(tmp, target)
                    return
                tmp.unlink(missing_ok=True)
            errors.append(error)
    raise RuntimeError("cannot compile the fused kernels:\n" + "\n".join(errors))


def _build() -> ctypes.CDLL:
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    texts = [path.read_text() for path in sorted(CSRC.glob("*.[ch]"))]  # sources and their header
    key = hashlib.sha256("\0".join([*texts, cc, _compiler_version(cc), _cpu_signature(), repr(SOURCES),
                                    repr(FLAG_SETS)]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / key / "libsnake.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _compile(cc, target)
        except OSError:  # cache not writable (permissions, read-only file system): build privately
            target = Path(tempfile.mkdtemp(prefix="espnet_snac_kernels_")) / "libsnake.so"
            _compile(cc, target)
    lib = ctypes.CDLL(str(target))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.snake_f32.argtypes = [ptr, i64, ptr, i64, ptr, i64, i64, i64, ctypes.c_int]
    lib.snake_f32.restype = None
    lib.snake_depthwise_f32.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int]
    lib.snake_depthwise_f32.restype = ctypes.c_int
    lib.snake_conv_out_f32.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int]
    lib.snake_conv_out_f32.restype = ctypes.c_int
    lib.depthwise_exact_f32.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.depthwise_exact_f32.restype = None
    lib.snake_exact_f32.argtypes = [ptr, ptr, i64, ptr, i64, ptr, i64, i64, i64, ctypes.c_int]
    lib.snake_exact_f32.restype = None
    lib.snake_depthwise_exact_f32.argtypes = [ptr, ptr, i64, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i64,
                                              ctypes.c_int, ctypes.c_int]
    lib.snake_depthwise_exact_f32.restype = ctypes.c_int
    lib.pointwise_exact_f32.argtypes = [ptr, i64, ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, ctypes.c_int,
                                        i64, ctypes.c_int]
    lib.pointwise_exact_f32.restype = ctypes.c_int
    lib.exact_set_mkl_threads_local.argtypes = [ptr]
    lib.exact_set_mkl_threads_local.restype = None
    lib.residual_unit_exact_f32.argtypes = [ptr, ptr, i64, ptr, i64, ptr, ptr, ptr, i64, i64, ctypes.c_int, ptr, ptr,
                                            ptr, ctypes.c_int, i64, i64, i64, ctypes.c_int]
    lib.residual_unit_exact_f32.restype = ctypes.c_int
    return lib


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (then :func:`status` says why); built once per process."""
    global _lib, _status
    if _status is not None:  # decided already (the common case: no lock per call)
        return _lib
    with _lock:
        if _status is not None:
            return _lib
        if os.environ.get("ESPNET_SNAC_NATIVE", "1") == "0":
            _status = "off (ESPNET_SNAC_NATIVE=0)"
        else:
            try:
                _lib = _build()
                _status = "on"
            except (OSError, RuntimeError) as exc:
                _status = f"off ({exc})"
                log.info("fused kernels unavailable, using torch ops: %s", exc)
    return _lib


def status() -> str:
    """``"on"`` or ``"off (reason)"``: whether the fast path uses the fused kernels."""
    load()
    return _status or "off"


def reset() -> None:
    """Forget the loaded kernels (the next :func:`load` looks again; tests and benchmarks)."""
    global _lib, _status
    _lib, _status = None, None


def _loaded() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(f"fused kernels are {status()}; check kernels.usable() first")
    return lib


def _row_stride(x: torch.Tensor) -> Optional[int]:
    """Distance between consecutive rows ``(b, c)`` of ``x (B, C, T)``, or None if uneven."""
    b, c, t = x.shape
    if c == 1:
        return x.stride(0) if b > 1 else t
    return x.stride(1) if b == 1 or x.stride(0) == c * x.stride(1) else None


def _flat(t: Optional[torch.Tensor], *shape: int) -> Optional[torch.Tensor]:
    """A per-channel parameter as a contiguous ``shape`` tensor (the caller keeps it alive while C
    reads it), or None."""
    return None if t is None else t.detach().reshape(*shape).contiguous()


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def usable(x: torch.Tensor) -> bool:
    """Rows ``(B, C, T)`` the kernels take: float32 on CPU, samples contiguous, rows evenly spaced."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 3 and x.stride(2) == 1
            and _row_stride(x) is not None and load() is not None)


def snake(x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``x + sin(alpha x)^2 / (alpha + 1e-9)`` into ``out`` (same shape, contiguous, not overlapping
    ``x``, which must be :func:`usable`)."""
    b, c, t = x.shape
    alpha = _flat(alpha, c)
    _loaded().snake_f32(x.data_ptr(), _row_stride(x), out.data_ptr(), t, alpha.data_ptr(), b * c, c, t,
                        torch.get_num_threads())
    return out


def snake_depthwise(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    dilation: int, out: torch.Tensor) -> Optional[torch.Tensor]:
    """Depthwise "same" conv (weight ``(C, 1, K)``, odd K, zero padding) of ``snake(x)`` into ``out``
    (as for :func:`snake`); None if the dilated kernel is wider than ``MAX_HALO`` allows (then use
    the separate ops)."""
    b, c, t = x.shape
    k = weight.shape[-1]
    if k % 2 == 0 or k // 2 * dilation > MAX_HALO:
        return None
    alpha, weight, bias = _flat(alpha, c), _flat(weight, c, k), _flat(bias, c)
    rc = _loaded().snake_depthwise_f32(x.data_ptr(), _row_stride(x), out.data_ptr(), t, alpha.data_ptr(),
                                       weight.data_ptr(), _ptr(bias), b * c, c, t, k, dilation,
                                       torch.get_num_threads())
    return out if rc == 0 else None


def snake_conv_out(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   out: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv(snake(x))`` for a conv with one output channel (weight ``(1, C, K)``, odd K, zero "same"
    padding) into ``out (B, 1, T)`` (contiguous), in one pass over ``x (B, C, T)`` (contiguous); None
    if the kernel is wider than ``MAX_HALO`` allows."""
    b, c, t = x.shape
    k = weight.shape[-1]
    if weight.shape[0] != 1 or k % 2 == 0 or k // 2 > MAX_HALO or not x.is_contiguous() or not out.is_contiguous():
        return None
    alpha, weight, bias = _flat(alpha, c), _flat(weight, c, k), _flat(bias, 1)
    rc = _loaded().snake_conv_out_f32(x.data_ptr(), t, out.data_ptr(), t, alpha.data_ptr(), weight.data_ptr(),
                                      _ptr(bias), b, c, t, k, torch.get_num_threads())
    return out if rc == 0 else None


def depthwise_exact(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
                    bias_first: bool, out: torch.Tensor) -> torch.Tensor:
    """Depthwise "same" conv (weight ``(C, 1, K)``, odd K, zero padding) of ``x`` (:func:`usable`)
    into ``out`` (contiguous): per output one FMA chain over the taps in order, started from the bias
    (``bias_first``) or from zero with the bias added last."""
    b, c, t = x.shape
    k = weight.shape[-1]
    weight, bias = _flat(weight, c, k), _flat(bias, c)
    _loaded().depthwise_exact_f32(x.data_ptr(), _row_stride(x), out.data_ptr(), t, weight.data_ptr(),
                                  _ptr(bias), b * c, c, t, k, dilation,
                                  int(bias_first), torch.get_num_threads())
    return out


class ExactDepthwise:
    """Depthwise "same" convolutions (and "same" convolutions from one input channel to C outputs, the
    encoder's first layer: C depthwise rows of one input) that round exactly like ``F.conv1d`` here.

    torch runs them through oneDNN, whose kernel (hence rounding order) depends on the layer's shape
    and the CPU: a direct kernel that starts each output from the bias, or im2col + GEMM that adds the
    bias last. The order is therefore learned per shape (batch, channels, kernel, dilation, length
    class: one per power of two below 2048, one above; threads) on the first real call of that shape: ``F.conv1d`` computes the result, the kernel
    runs both orders on the same inputs for the first and last 8 channels (oneDNN's first and last
    channel blocks; every sample), and the one equal to ``F.conv1d`` there is kept. A call decides only
    if the two orders differ in enough outputs (on silence they agree everywhere and could not tell
    oneDNN's order from a third one); a shape neither order reproduces keeps ``F.conv1d``. Deciding
    costs about one ``F.conv1d`` of that shape (no random probe), once per shape class; afterwards the
    kernel is about 3.5x faster than ``F.conv1d`` on the encoder's layers (no re-layout, no im2col).
    """

    MIN_DIFFERING = 256  # outputs in which the two orders must differ for a call to decide (or 1/8 of them)

    def __init__(self) -> None:
        self._orders: Dict[tuple, Optional[bool]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int) -> tuple:
        b, c, t = x.shape
        if c == 1 and weight.shape[0] > 1:  # one input channel to C outputs: another oneDNN kernel
            return ("one input channel", b, weight.shape[0], weight.shape[-1], dilation, min(t.bit_length(), 12),
                    bias is not None, torch.get_num_threads())
        # Lengths of 2048 and more share one class: measured at 1 and 2 threads on 48-384 channels and
        # 26 to 578k samples, the order depends on the dilation only (d = 1 bias first, else last).
        return (b, c, weight.shape[-1], dilation, min(t.bit_length(), 12), bias is not None,
                torch.get_num_threads())

    def known(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              dilation: int) -> Tuple[bool, Optional[bool]]:
        """``(decided, bias_first)`` for this shape; ``bias_first`` None: ``F.conv1d`` is kept."""
        key = self.key(x, weight, bias, dilation)
        return (key in self._orders, self._orders.get(key))

    def _decide(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
                want: torch.Tensor) -> None:
        """Record the order for ``x``'s shape if these inputs tell the two orders apart."""
        key = self.key(x, weight, bias, dilation)
        x = self._rows(x, weight)
        c = x.shape[1]
        if bias is None:  # both orders are the same chain: a random probe tells whether it is F.conv1d's
            decided = self._probe(x.shape[0], c, x.shape[2], weight.shape[-1], dilation)
        else:
            rows = torch.cat([torch.arange(8), torch.arange(c - 8, c)]) if c > 16 else torch.arange(c)
            xs, ws, bs = x[:, rows].contiguous(), weight[rows], bias[rows]
            first = depthwise_exact(xs, ws, bs, dilation, True, torch.empty_like(xs))
            last = depthwise_exact(xs, ws, bs, dilation, False, torch.empty_like(xs))
            if int((first != last).sum()) < min(self.MIN_DIFFERING, max(1, first.numel() // 8)):
                return  # silence-like inputs: decide on a later call
            ref = want[:, rows]
            decided = True if torch.equal(first, ref) else False if torch.equal(last, ref) else None
        if decided is None:
            log.info("no exact depthwise order for shape %s; using F.conv1d", tuple(x.shape))
        with self._lock:
            self._orders[key] = decided

    @staticmethod
    def _rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The kernel's input: ``x`` itself, or for a conv from one input channel to C outputs (the
        encoder's first layer: each output channel is a depthwise row of the same input) ``x``
        repeated over C rows without a copy (row stride 0)."""
        return x.expand(x.shape[0], weight.shape[0], x.shape[2]) if x.shape[1] == 1 and weight.shape[0] > 1 else x

    @staticmethod
    def _probe(b: int, c: int, t: int, k: int, dilation: int) -> Optional[bool]:
        g = torch.Generator().manual_seed(b * 1_000_003 + c * 1009 + t * 7 + k * 3 + dilation)
        x = torch.randn(b, c, t, generator=g)
        weight = torch.randn(c, 1, k, generator=g)
        want = F.conv1d(x, weight, None, padding=k // 2 * dilation, dilation=dilation, groups=c)
        return True if torch.equal(depthwise_exact(x, weight, None, dilation, True, torch.empty_like(x)), want) else None

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
                 out: torch.Tensor) -> Optional[torch.Tensor]:
        """The conv (in ``out`` when the kernel ran), or None when this shape must use ``F.conv1d``."""
        decided, bias_first = self.known(x, weight, bias, dilation)
        if decided:
            return None if bias_first is None else depthwise_exact(self._rows(x, weight), weight, bias, dilation,
                                                                   bias_first, out)
        k = weight.shape[-1]
        want = F.conv1d(x, weight, bias, padding=k // 2 * dilation, dilation=dilation, groups=x.shape[1])
        self._decide(x, weight, bias, dilation, want)
        decided, bias_first = self.known(x, weight, bias, dilation)
        return None if decided and bias_first is None else want


exact_depthwise = ExactDepthwise()


class Order(NamedTuple):
    """How oneDNN reduces a kernel-1 convolution: the first block's chain starts from the bias
    (``bias_first``) or the bias comes last; input channels in blocks of ``reduce_block`` (0: one block)."""
    bias_first: bool
    reduce_block: int = 0


def pointwise_exact(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], bias_first: bool,
                    out: torch.Tensor, residual: Optional[torch.Tensor] = None,
                    reduce_block: int = 0) -> Optional[torch.Tensor]:
    """Kernel-1 conv (weight ``(C_out, C_in, 1)``) of one row ``x (1, C_in, T)`` (:func:`usable`) into
    ``out (1, C_out, T)`` (samples contiguous): the input channels reduced in blocks of
    ``reduce_block`` (0: one block), each block one FMA chain in order, the first started from the bias
    (``bias_first``), the others from zero, each added to the sum of the ones before; without
    ``bias_first`` the bias is added last; then plus ``residual (1, C_out, T)`` if given. None if the
    shape is not one the kernel takes."""
    b, c_in, t = x.shape
    c_out = weight.shape[0]
    if b != 1 or out.shape != (1, c_out, t) or out.stride(2) != 1 or (
            residual is not None and (residual.shape != out.shape or residual.stride(2) != 1)):
        return None
    weight, bias = _flat(weight, c_out, c_in), _flat(bias, c_out)
    rc = _loaded().pointwise_exact_f32(
        x.data_ptr(), x.stride(1), out.data_ptr(), out.stride(1), _ptr(residual),
        0 if residual is None else residual.stride(1), weight.data_ptr(), _ptr(bias), c_in, c_out, t,
        int(bias_first), reduce_block, torch.get_num_threads())
    return out if rc == 0 else None


class ExactPointwise:
    """Kernel-1 convolutions of one utterance that round exactly like ``F.conv1d`` on this machine.

    oneDNN's 1x1 kernels reduce the input channels as FMA chains in order: one chain started from the
    bias, or from zero with the bias added last, or (when they split the reduction) chains over blocks
    of channels, the first from the bias, added one after the other (:class:`Order`). Which one depends
    on the channels, the thread count and the exact length, not only its magnitude (measured with 2
    threads: 48 channels start from zero up to 263 samples and from the bias from 511 on; 192 channels
    from the bias, except at lengths within one sample of a power of two, where the reduction is split
    in blocks of 96, and so at every length that is a multiple of 1024; 384 and 768 channels split in
    blocks of 96 to 256 depending on the length; with 1 thread the bias comes last). So the order is decided per exact shape (channels in and out,
    length, bias, threads) on the first real call of that shape: ``F.conv1d`` computes the result that
    is returned, the kernel runs the candidate orders on the same inputs for the first and last 8
    output channels (oneDNN's first and last channel blocks; every sample), and the one that equals
    ``F.conv1d`` there in every output is kept (a call decides only if the two single-chain orders
    differ in at least ``MIN_DIFFERING`` outputs: on silence they agree nearly everywhere and could not
    tell oneDNN's order from another). A shape no candidate reproduces keeps ``F.conv1d``.

    Deciding costs about one ``F.conv1d`` per new length. For up to ``MAX_LENDING_CHANNELS`` input
    channels, the lengths of a layer shape (channels, bias, threads) from ``MIN_LENDING_LENGTH``
    samples on, away from powers of two, form one class; once its first ``TRUST_AFTER`` decided
    lengths all chose the same order, the class lends that order to its other lengths (measured at 1
    and 2 threads: 48 and 96 channels keep one order at every encoder length of 1-13 s utterances and
    over 511 to 600k samples). Wider layers are always decided per length: at 2 threads 192 channels
    split the reduction exactly at the lengths that are multiples of 1024. Lengths within
    ``NEAR_POWER_OF_TWO`` samples of a power of two and below 2048 samples are always decided. 2-4x
    faster than ``F.conv1d`` on the encoder's 48- to 192-channel layers (no re-layout of input, weight
    and output; the residual sum fused into the store); wider layers keep ``F.conv1d``, which is as fast.
    """

    MAX_SHAPES = 4096  # decided shapes kept (then forgotten all at once)
    MIN_DIFFERING = 256  # outputs in which the two orders must differ for a call to decide the order
    MAX_CHANNELS = 192  # wider inputs keep F.conv1d (oneDNN is as fast there)
    TRUST_AFTER = 2
    MAX_LENDING_CHANNELS = 96
    NEAR_POWER_OF_TWO = 16
    MIN_LENDING_LENGTH = 2048

    def __init__(self) -> None:
        self._orders: Dict[tuple, Optional[Order]] = {}
        self._classes: Dict[tuple, list] = {}  # class key -> orders of its decided lengths
        self._lock = threading.Lock()

    @classmethod
    def takes(cls, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Shapes the kernel handles at all: one row, C_out a multiple of 8, C_in <= MAX_CHANNELS,
        :func:`usable` input."""
        return (x.dim() == 3 and x.shape[0] == 1 and weight.shape[0] % 8 == 0 and x.shape[1] <= cls.MAX_CHANNELS
                and usable(x))

    @staticmethod
    def key(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
        return (x.shape[1], weight.shape[0], x.shape[2], bias is not None, torch.get_num_threads())

    @classmethod
    def _class_of(cls, key: tuple) -> Optional[tuple]:
        """The length class of an exact shape, or None where every length is decided on its own."""
        c_in, c_out, t, with_bias, threads = key
        power = 1 << (t.bit_length() - 1)
        if (c_in > cls.MAX_LENDING_CHANNELS or t < cls.MIN_LENDING_LENGTH
                or min(t - power, 2 * power - t) <= cls.NEAR_POWER_OF_TWO):
            return None
        return (c_in, c_out, with_bias, threads)

    def known(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[bool, Optional[Order]]:
        """``(decided, order)`` for this shape (decided, or lent by its length class); ``order`` None:
        ``F.conv1d`` is kept."""
        key = self.key(x, weight, bias)
        if key in self._orders:
            return True, self._orders[key]
        group = self._classes.get(self._class_of(key)) if self._class_of(key) else None
        if group and len(group) >= self.TRUST_AFTER and group[0] is not None and all(o == group[0] for o in group):
            return True, group[0]
        return False, None

    def _candidates(self, c_in: int):
        yield Order(True)
        yield Order(False)
        for block in range(16, c_in, 16):  # oneDNN's reduce blocks are multiples of its 16-channel blocks
            yield Order(True, block)
            yield Order(False, block)

    def _decide(self, key: tuple, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                want: torch.Tensor) -> None:
        c_out = weight.shape[0]
        rows = torch.cat([torch.arange(8), torch.arange(c_out - 8, c_out)]) if c_out > 16 else torch.arange(c_out)
        w_rows, b_rows = weight[rows], None if bias is None else bias[rows]
        ref = want[:, rows]

        def run(order: Order) -> Optional[torch.Tensor]:
            return pointwise_exact(x, w_rows, b_rows, order.bias_first, torch.empty_like(ref),
                                   reduce_block=order.reduce_block)

        first, last = run(Order(True)), run(Order(False))
        # Inputs on which the two orders round alike nearly everywhere (silence: a few distinct values
        # per channel) cannot tell oneDNN's order from another: decide on a later call.
        if first is None or last is None or int((first != last).sum()) < self.MIN_DIFFERING:
            return
        found = None
        for order in self._candidates(x.shape[1]):
            got = first if order == Order(True) else last if order == Order(False) else run(order)
            if torch.equal(got, ref):
                found = order
                break
        if found is None:
            log.info("no exact pointwise order for shape %s; using F.conv1d", key)
        with self._lock:
            if len(self._orders) >= self.MAX_SHAPES:
                self._orders.clear()
                self._classes.clear()
            self._orders[key] = found
            group = self._class_of(key)
            if group is not None:
                self._classes.setdefault(group, []).append(found)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                 residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """``F.conv1d(x, weight, bias) + residual`` bit for bit (in ``out`` when the kernel ran, in a
        new tensor otherwise), or None for a shape the kernel does not take (:meth:`takes`)."""
        if not self.takes(x, weight):
            return None
        decided, order = self.known(x, weight, bias)
        if decided:
            if order is not None:
                return pointwise_exact(x, weight, bias, order.bias_first, out, residual, order.reduce_block)
            y = F.conv1d(x, weight, bias)
            return y if residual is None else y.add_(residual)
        want = F.conv1d(x, weight, bias)  # the result of this call, and the reference for the order
        self._decide(self.key(x, weight, bias), x, weight, bias, want)
        return want if residual is None else want.add_(residual)


exact_pointwise = ExactPointwise()


class ExactSnake:
    """Snake (alone, or fused with the depthwise conv after it) rounding exactly like torch's ops.

    Needs the vector sine torch itself calls: MKL's ``vsSin`` inside torch's CPU library (x86 builds
    of torch use it for ``torch.sin``). Usable only if a probe of random inputs equals Snake1d's
    formula computed by torch in every element.
    """

    def __init__(self) -> None:
        self._vsin: Optional[int] = None
        self._checked: Optional[bool] = None
        self._lock = threading.Lock()

    @staticmethod
    def _find_vsin() -> Optional[int]:
        return ExactSnake._find_symbol("VSSIN_")

    @staticmethod
    def _find_symbol(name: str) -> Optional[int]:
        """Address of an MKL function inside torch's CPU library, or None."""
        lib_dir = Path(torch.__file__).parent / "lib"
        for lib_name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
            try:
                return ctypes.cast(getattr(ctypes.CDLL(str(lib_dir / lib_name)), name), ctypes.c_void_p).value
            except (OSError, AttributeError):
                continue
        return None

    def available(self) -> bool:
        if self._checked is None:
            with self._lock:
                if self._checked is None:
                    self._checked = self._probe()
        return self._checked

    def _probe(self) -> bool:
        if load() is None:
            return False
        self._vsin = self._find_vsin()
        # MKL's per-thread thread count: our kernels set it to 1 around their vsSin calls (csrc/exact.c)
        _loaded().exact_set_mkl_threads_local(self._find_symbol("MKL_Set_Num_Threads_Local"))
        if self._vsin is None:
            log.info("torch's vector sine (MKL vsSin) not found; encoder Snake uses torch ops")
            return False
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 2500, generator=g) * torch.logspace(-3, 2, 2500)
        alpha = torch.rand(1, 8, 1, generator=g) * 5 + 0.01
        want = x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)  # espnet_snac.model.layers.Snake1d
        ok = torch.equal(self.snake(x, alpha, torch.empty_like(x)), want)
        if not ok:
            log.info("exact Snake kernel differs from torch.sin on this build; encoder Snake uses torch ops")
        return ok

    def snake(self, x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        alpha = _flat(alpha, c)
        _loaded().snake_exact_f32(self._vsin, x.data_ptr(), _row_stride(x), out.data_ptr(), t, alpha.data_ptr(),
                                  b * c, c, t, torch.get_num_threads())
        return out

    def snake_depthwise(self, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor], dilation: int, out: torch.Tensor) -> Optional[torch.Tensor]:
        """``F.conv1d(snake(x))`` bit for bit in one pass, or None (then use the separate ops)."""
        decided, bias_first = exact_depthwise.known(x, weight, bias, dilation)
        k = weight.shape[-1]
        if bias_first is None or k // 2 * dilation > MAX_HALO:  # undecided: the caller's F.conv1d decides
            return None
        b, c, t = x.shape
        alpha, weight, bias = _flat(alpha, c), _flat(weight, c, k), _flat(bias, c)
        rc = _loaded().snake_depthwise_exact_f32(
            self._vsin, x.data_ptr(), _row_stride(x), out.data_ptr(), t, alpha.data_ptr(), weight.data_ptr(),
            _ptr(bias), b * c, c, t, k, dilation, int(bias_first),
            torch.get_num_threads())
        return out if rc == 0 else None


exact_snake = ExactSnake()


def residual_unit_exact(x: torch.Tensor, alpha1: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
                        dilation: int, alpha2: torch.Tensor, pw_weight: torch.Tensor, pw_bias: Optional[torch.Tensor],
                        out: torch.Tensor) -> Optional[torch.Tensor]:
    """A residual unit of one row, ``x + pw(snake2(dw(snake1(x))))`` (``x (1, C, T)``, depthwise "same"
    conv ``dw_weight (C, 1, K)``, kernel-1 conv ``pw_weight (C, C, 1)``), in one pass over cache-sized
    tiles into ``out`` (contiguous, not overlapping ``x``), bit for bit like the exact kernels run one
    after the other. None unless both convolutions' orders are decided and kernel-made
    (:class:`ExactDepthwise`, :class:`ExactPointwise`), the exact Snake is available and the shape fits
    (then run the separate kernels)."""
    b, c, t = x.shape
    k = dw_weight.shape[-1]
    if (b != 1 or not usable(x) or out.shape != x.shape or not out.is_contiguous() or c % 8
            or k // 2 * dilation > MAX_HALO or not exact_snake.available()
            or not exact_pointwise.takes(x, pw_weight)):
        return None
    dw_decided, dw_first = exact_depthwise.known(x, dw_weight, dw_bias, dilation)
    pw_decided, pw_order = exact_pointwise.known(x, pw_weight, pw_bias)
    if dw_first is None or pw_order is None:
        return None
    a1, a2 = _flat(alpha1, c), _flat(alpha2, c)
    dw_w, dw_b, pw_w, pw_b = _flat(dw_weight, c, k), _flat(dw_bias, c), _flat(pw_weight, c, c), _flat(pw_bias, c)
    rc = _loaded().residual_unit_exact_f32(
        exact_snake._vsin, x.data_ptr(), _row_stride(x), out.data_ptr(), t, a1.data_ptr(), dw_w.data_ptr(), _ptr(dw_b),
        k, dilation, int(dw_first), a2.data_ptr(), pw_w.data_ptr(), _ptr(pw_b), int(pw_order.bias_first),
        pw_order.reduce_block, c, t, torch.get_num_threads())
    if rc == -2:
        raise MemoryError("residual_unit_exact_f32: out of memory for its tile buffers")
    return out if rc == 0 else None
