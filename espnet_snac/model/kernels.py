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
from typing import Dict, Optional, Sequence, Tuple

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
    lib.depthwise_exact_f32.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.depthwise_exact_f32.restype = None
    lib.snake_exact_f32.argtypes = [ptr, ptr, i64, ptr, i64, ptr, i64, i64, i64, ctypes.c_int]
    lib.snake_exact_f32.restype = None
    lib.snake_depthwise_exact_f32.argtypes = [ptr, ptr, i64, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i64,
                                              ctypes.c_int, ctypes.c_int]
    lib.snake_depthwise_exact_f32.restype = ctypes.c_int
    lib.pointwise_exact_f32.argtypes = [ptr, i64, ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, ctypes.c_int,
                                        ctypes.c_int]
    lib.pointwise_exact_f32.restype = ctypes.c_int
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
    """Depthwise "same" convolutions that round exactly like ``F.conv1d`` on this machine.

    torch runs them through oneDNN, whose kernel (hence rounding order) depends on the layer's shape
    and the CPU: a direct kernel that starts each output from the bias, or im2col + GEMM that adds the
    bias last. The order is therefore learned per shape (batch, channels, kernel, dilation, length
    class, threads) from a random probe of that shape: both orders run against ``F.conv1d`` and the
    one equal to it in every output is kept; if neither is, that shape keeps ``F.conv1d``. About 3.5x
    faster than ``F.conv1d`` on the encoder's layers (no re-layout, no im2col).
    """

    def __init__(self) -> None:
        self._orders: Dict[tuple, Optional[bool]] = {}
        self._lock = threading.Lock()

    def order(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int) -> Optional[bool]:
        """``bias_first`` for this shape, or None when neither order reproduces ``F.conv1d``."""
        b, c, t = x.shape
        k = weight.shape[-1]
        key = (b, c, k, dilation, t.bit_length(), bias is not None, torch.get_num_threads())
        if key not in self._orders:
            with self._lock:
                if key not in self._orders:
                    self._orders[key] = self._probe(b, c, t, k, dilation, bias is not None)
        return self._orders[key]

    @staticmethod
    def _probe(b: int, c: int, t: int, k: int, dilation: int, with_bias: bool) -> Optional[bool]:
        g = torch.Generator().manual_seed(b * 1_000_003 + c * 1009 + t * 7 + k * 3 + dilation)
        x = torch.randn(b, c, t, generator=g)
        weight = torch.randn(c, 1, k, generator=g)
        bias = torch.randn(c, generator=g) if with_bias else None
        want = F.conv1d(x, weight, bias, padding=k // 2 * dilation, dilation=dilation, groups=c)
        for bias_first in (True, False):
            if torch.equal(depthwise_exact(x, weight, bias, dilation, bias_first, torch.empty_like(x)), want):
                return bias_first
        log.info("no exact depthwise order for shape %s; using F.conv1d", (b, c, t, k, dilation))
        return None

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
                 out: torch.Tensor) -> Optional[torch.Tensor]:
        """The conv into ``out``, or None when this shape must use ``F.conv1d``."""
        bias_first = self.order(x, weight, bias, dilation)
        return None if bias_first is None else depthwise_exact(x, weight, bias, dilation, bias_first, out)


exact_depthwise = ExactDepthwise()


def pointwise_exact(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], bias_first: bool,
                    out: torch.Tensor, residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Kernel-1 conv (weight ``(C_out, C_in, 1)``) of one row ``x (1, C_in, T)`` (:func:`usable`) into
    ``out (1, C_out, T)`` (samples contiguous): per output one FMA chain over the input channels in
    order, started from the bias (``bias_first``) or from zero with the bias added last; then plus
    ``residual (1, C_out, T)`` if given. None if the shape is not one the kernel takes."""
    b, c_in, t = x.shape
    c_out = weight.shape[0]
    if b != 1 or out.shape != (1, c_out, t) or out.stride(2) != 1 or (
            residual is not None and (residual.shape != out.shape or residual.stride(2) != 1)):
        return None
    weight, bias = _flat(weight, c_out, c_in), _flat(bias, c_out)
    rc = _loaded().pointwise_exact_f32(
        x.data_ptr(), x.stride(1), out.data_ptr(), out.stride(1), _ptr(residual),
        0 if residual is None else residual.stride(1), weight.data_ptr(), _ptr(bias), c_in, c_out, t,
        int(bias_first), torch.get_num_threads())
    return out if rc == 0 else None


class ExactPointwise:
    """Kernel-1 convolutions of one utterance that round exactly like ``F.conv1d`` on this machine.

    oneDNN's 1x1 kernel computes each output as one FMA chain over the input channels in order,
    started from the bias or from zero with the bias added last; which one (or neither: another
    split of the chain) depends on the channels, the thread count and the exact length, not only
    its magnitude (measured with 2 threads: 48 channels start from zero up to 256 samples and from
    the bias from 454 on; 192 channels from the bias except at lengths near a power of two, where
    neither order matches). So the order is decided per exact shape (channels in and out, length,
    bias, threads) on the first real call of that shape: ``F.conv1d`` computes the result that is
    returned, the kernel runs both orders on the same inputs for the first and last 8 output
    channels (oneDNN's first and last channel blocks; every sample), and the one that equals
    ``F.conv1d`` there in every output is kept for the later calls of that shape (a call decides only if the two
    orders differ in at least ``MIN_DIFFERING`` outputs: on silence they agree nearly everywhere and
    could not tell oneDNN's order from a third one). The encoder calls each shape three times per
    utterance, and repeated lengths every time; a shape neither order reproduces keeps ``F.conv1d``. 2-3x faster than ``F.conv1d`` on the encoder's 48- and 96-channel layers (no
    re-layout of input, weight and output; the residual sum fused into the store).
    """

    MAX_SHAPES = 4096  # decided shapes kept (then forgotten all at once)
    MIN_DIFFERING = 256  # outputs in which the two orders must differ for a call to decide the order

    def __init__(self) -> None:
        self._orders: Dict[tuple, Optional[bool]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Shapes the kernel handles at all: one row, C_out a multiple of 8, :func:`usable` input."""
        return x.dim() == 3 and x.shape[0] == 1 and weight.shape[0] % 8 == 0 and usable(x)

    @staticmethod
    def key(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
        return (x.shape[1], weight.shape[0], x.shape[2], bias is not None, torch.get_num_threads())

    def known(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[bool, Optional[bool]]:
        """``(decided, bias_first)`` for this shape; ``bias_first`` None: ``F.conv1d`` is kept."""
        key = self.key(x, weight, bias)
        return (key in self._orders, self._orders.get(key))

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                 residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """``F.conv1d(x, weight, bias) + residual`` bit for bit (in ``out`` when the kernel ran, in a
        new tensor otherwise), or None for a shape the kernel does not take (:meth:`takes`)."""
        if not self.takes(x, weight):
            return None
        key = self.key(x, weight, bias)
        if key in self._orders:
            bias_first = self._orders[key]
            if bias_first is not None:
                return pointwise_exact(x, weight, bias, bias_first, out, residual)
            y = F.conv1d(x, weight, bias)
            return y if residual is None else y.add_(residual)
        want = F.conv1d(x, weight, bias)  # the result of this call, and the reference for the order
        # Both orders on the first and last 8 output channels (oneDNN's first and last channel blocks)
        # over every sample, compared with F.conv1d's: a sixth to a third of a full run.
        c_out = weight.shape[0]
        rows = torch.cat([torch.arange(8), torch.arange(c_out - 8, c_out)]) if c_out > 16 else torch.arange(c_out)
        w_rows, b_rows = weight[rows], None if bias is None else bias[rows]
        ref = want[:, rows]
        first = pointwise_exact(x, w_rows, b_rows, True, torch.empty_like(ref))
        last = pointwise_exact(x, w_rows, b_rows, False, torch.empty_like(ref))
        # Inputs on which the two orders round alike nearly everywhere (silence: a few distinct values
        # per channel) cannot tell oneDNN's order from a third one: decide on a later call.
        if first is not None and last is not None and int((first != last).sum()) >= self.MIN_DIFFERING:
            found = True if torch.equal(first, ref) else False if torch.equal(last, ref) else None
            if found is None:
                log.info("no exact pointwise order for shape %s; using F.conv1d", key)
            with self._lock:
                if len(self._orders) >= self.MAX_SHAPES:
                    self._orders.clear()
                self._orders[key] = found
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
        lib_dir = Path(torch.__file__).parent / "lib"
        for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
            try:
                return ctypes.cast(getattr(ctypes.CDLL(str(lib_dir / name)), "VSSIN_"), ctypes.c_void_p).value
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
        bias_first = exact_depthwise.order(x, weight, bias, dilation)
        k = weight.shape[-1]
        if bias_first is None or k // 2 * dilation > MAX_HALO:
            return None
        b, c, t = x.shape
        alpha, weight, bias = _flat(alpha, c), _flat(weight, c, k), _flat(bias, c)
        rc = _loaded().snake_depthwise_exact_f32(
            self._vsin, x.data_ptr(), _row_stride(x), out.data_ptr(), t, alpha.data_ptr(), weight.data_ptr(),
            _ptr(bias), b * c, c, t, k, dilation, int(bias_first),
            torch.get_num_threads())
        return out if rc == 0 else None


exact_snake = ExactSnake()
