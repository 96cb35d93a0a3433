"""The compiled loops of the Numba backend (imported only when Numba is installed).

Every reduction is one pass over the pairs: for a row ``z_i`` and a block of ``BLOCK``
sources, the squared distances (from differences, exact near ``r = 0``), the kernel, and every
output channel, in buffers that stay in the L1 cache; the rows are shared among
threads by the backend.  The sources come transposed, ``(d, m)``, so that each inner loop runs over
consecutive sources and vectorises.

The exponential is evaluated in the loops themselves, by range reduction and a polynomial,
instead of a call to libm per pair, which would stop the loop from vectorising:
``exp(x) = 2ⁿ exp(r)``, ``n = round(x / ln 2)``, ``r = x - n ln 2`` (in two parts, exact),
``exp(r)`` by its Taylor polynomial on ``|r| ≤ ln 2 / 2`` (degree 13 in float64, 7 in
float32: truncation below the rounding error), and ``2ⁿ`` built from its exponent bits in
two halves, so that results down to the subnormals and an exact 0 below them come out
right.  Within about 1 ulp of the exact value in both dtypes (tested: at most 0.98 ulp in
float64, 1.02 in float32, over 2·10⁶ arguments).
"""

from __future__ import annotations

import contextlib
import glob
import os
import warnings

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic, overload

# Sources per block: a few KiB of buffers per row, which stay in L1.
BLOCK = 256

# kernel codes (the order of skgradflow.kernels.KERNELS)
GAUSSIAN, LAPLACIAN, IMQ, ENERGY = 0, 1, 2, 3

# Reassociation lets the sums over a block vectorise; no assumption about NaN or inf is made,
# so a non-finite input still propagates instead of being optimised away.
_FAST = {"reassoc", "contract", "nsz", "arcp"}

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 with its low 32 bits zero: n·_LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_LN2_HI_F32 = 0.693145751953125  # low 12 bits zero
_LN2_LO_F32 = 1.428606765330187045e-06


def _bitcast(int_type, float_type, ir_type):
    """An intrinsic that reinterprets the bits of an integer as a float of the same width
    (``2ⁿ`` from its exponent field, with no conversion and no memory round trip)."""

    @intrinsic
    def bits_as_float(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir_type)

        return float_type(int_type), codegen

    return bits_as_float


_bits_as_float64 = _bitcast(types.int64, types.float64, ir.DoubleType())
_bits_as_float32 = _bitcast(types.int32, types.float32, ir.FloatType())


def fast_exp(x):
    """``exp(x)`` as the compiled loops compute it (NumPy's outside them)."""
    return np.exp(x)


# Compiled on their own, without reassociation, which would fold the two-part ``n ln 2``
# back into one rounded product (hundreds of ulp at |x| ~ 700); LLVM still inlines them.
@njit(fastmath={"contract"})
def _exp64(x):
    # below -746, 2ⁿ·p rounds to exactly 0 (and exp(-inf) = 0); above 709.7 it overflows
    t = min(max(x, -746.0), 709.78)
    n = np.floor(t * _LOG2E + 0.5)
    r = (t - n * _LN2_HI) - n * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    # 1 + (r + r²(½ + ...)): the small terms first, so that the last addition carries the
    # one rounding that matters
    p = 1.0 + (r + (r * r) * p)
    k = np.int64(n)
    k1 = k >> 1
    return (p * _bits_as_float64((k1 + 1023) << 52)) * _bits_as_float64((k - k1 + 1023) << 52)


@njit(fastmath={"contract"})
def _exp32(x):
    f = np.float32
    t = min(max(x, f(-105.0)), f(88.72))
    n = np.floor(t * f(_LOG2E) + f(0.5))
    r = (t - n * f(_LN2_HI_F32)) - n * f(_LN2_LO_F32)
    p = f(1.0 / 5040.0)
    p = p * r + f(1.0 / 720.0)
    p = p * r + f(1.0 / 120.0)
    p = p * r + f(1.0 / 24.0)
    p = p * r + f(1.0 / 6.0)
    p = p * r + f(0.5)
    p = f(1.0) + (r + (r * r) * p)
    k = np.int32(n)
    k1 = k >> np.int32(1)
    return (p * _bits_as_float32((k1 + np.int32(127)) << np.int32(23))) * _bits_as_float32(
        (k - k1 + np.int32(127)) << np.int32(23)
    )


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _exp32(x)
    if isinstance(x, types.Float):
        return lambda x: _exp64(x)
    return None


# --- the disk cache, which must never stop a fit ------------------------------------------------
_cache_warnings: set[str] = set()


def _warn_once(what: str, message: str) -> None:
    if what not in _cache_warnings:
        _cache_warnings.add(what)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


_NOWHERE = ("no writable folder for the Numba backend's compiled-code cache ({cause}); its "
            "loops are compiled in memory, again in every process (about a minute). Fix: set "
            "NUMBA_CACHE_DIR to a writable folder.")


class _RepairingCache(FunctionCache):
    """Numba's disk cache of one function, where an entry that cannot be read (a truncated or
    corrupted index or data file) is discarded and compiled again, and an entry that cannot
    be written leaves the function compiled in memory: each with one warning."""

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:
            self._discard()
            _warn_once("unreadable", (
                f"the Numba backend's compiled-code cache in {self._cache_path} could not be "
                f"read ({type(exc).__name__}: {exc}); its entries were discarded and are being "
                "compiled again."))
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as exc:
            self.disable()
            _warn_once("nowhere", _NOWHERE.format(cause=f"{type(exc).__name__}: {exc}"))

    def _discard(self) -> None:
        index = self._cache_file._index_path
        for path in [index, *glob.glob(glob.escape(index[:-len(".nbi")]) + ".*.nbc")]:
            with contextlib.suppress(OSError):
                os.remove(path)


def _jit(fn):
    """Compiled without the GIL, and cached on disk where Numba finds a writable folder."""
    dispatcher = njit(nogil=True, fastmath=_FAST)(fn)
    try:
        dispatcher.enable_caching()
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        _warn_once("nowhere", _NOWHERE.format(cause=exc))
    else:
        dispatcher._cache.__class__ = _RepairingCache
    return dispatcher



@_jit
def exp_array(x):
    """``fast_exp`` over an array, for the accuracy tests."""
    out = np.empty_like(x)
    for j in range(x.size):
        out[j] = fast_exp(x[j])
    return out


# --- one block of sources against one row ----------------------------------------------------
@njit(inline="always", fastmath=_FAST)
def _sq_dist(z, ST, j0, nb, r2, dims=-1):
    """``r2[j] = Σ_k (s_kj - z_k)²`` over the first ``dims`` coordinates (all by default;
    ``dims = 0`` gives zeros)."""
    dims = ST.shape[0] if dims < 0 else dims
    if dims == 0:
        r2[:nb] = 0.0
        return
    zk = z[0]
    s = ST[0, j0:j0 + nb]
    for j in range(nb):
        t = s[j] - zk
        r2[j] = t * t
    for k in range(1, dims):
        zk = z[k]
        s = ST[k, j0:j0 + nb]
        for j in range(nb):
            t = s[j] - zk
            r2[j] += t * t


@njit(inline="always", fastmath=_FAST)
def _kernel(kind, r2, kv, nb, c):
    # c = [0.5, 1, 0] in the dtype of the data
    if kind == GAUSSIAN:
        half = c[0]  # read once: a store to kv could alias c for all LLVM knows
        for j in range(nb):
            kv[j] = fast_exp(-half * r2[j])
    elif kind == LAPLACIAN:
        for j in range(nb):
            kv[j] = fast_exp(-np.sqrt(r2[j]))
    elif kind == IMQ:
        for j in range(nb):
            kv[j] = c[1] / np.sqrt(c[1] + r2[j])
    else:
        for j in range(nb):
            kv[j] = -np.sqrt(r2[j])


@njit(inline="always", fastmath=_FAST)
def _grad_factor(kind, r2, kv, ga, a, j0, nb, c):
    """``ga_j = -γ(r2_j) a_j``, with ``∇_u κ(|u - v|²) = γ (u - v)``, so that the gradient is
    ``Σ_j ga_j (v_j - u)``; 0 at the cusps' ``r = 0``."""
    if kind == GAUSSIAN:
        for j in range(nb):
            ga[j] = kv[j] * a[j0 + j]
    elif kind == IMQ:
        for j in range(nb):
            ga[j] = (kv[j] * kv[j] * kv[j]) * a[j0 + j]
    elif kind == LAPLACIAN:
        for j in range(nb):
            ga[j] = kv[j] / np.sqrt(r2[j]) * a[j0 + j] if r2[j] > c[2] else c[2]
    else:
        for j in range(nb):
            ga[j] = a[j0 + j] / np.sqrt(r2[j]) if r2[j] > c[2] else c[2]


@njit(inline="always", fastmath=_FAST)
def _add_channels(kv, VT, j0, nb, acc, zero):
    """``acc[q] += Σ_j kv_j VT[q, j0 + j]`` over the block, for every channel ``q``."""
    for q in range(VT.shape[0]):
        v = VT[q, j0:j0 + nb]
        s = zero
        for j in range(nb):
            s += kv[j] * v[j]
        acc[q] += s


@njit(inline="always", fastmath=_FAST)
def _add_first_moment(wts, z, ST, j0, nb, g, zero):
    """``g[k] += Σ_j wts_j (s_kj - z_k)`` over the block, for every coordinate ``k``."""
    for k in range(ST.shape[0]):
        zk = z[k]
        src = ST[k, j0:j0 + nb]
        s = zero
        for j in range(nb):
            s += wts[j] * (src[j] - zk)
        g[k] += s


# --- the reductions, over a range of rows ------------------------------------------------------
# Each reduction has a loop over the rows ``i0 <= i < i1`` of ``Z`` (``*_rows``), and a driver
# (``*_chunks``) that claims chunks of rows from a counter shared between threads (an atomic
# increment) and marks each chunk it finishes as its own in ``owner`` (an atomic
# compare-and-swap), so that several threads share a reduction with no lock and without
# holding the GIL (see ``_numba.py``).
@intrinsic
def _fetch_add(typingctx, array, index, value):
    """``array[index] += value`` atomically; returns the value before."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return types.int64(array, index, value), codegen


@intrinsic
def _claim(typingctx, array, index, new):
    """``array[index] = new`` if it holds -1, atomically."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        minus_one = context.get_constant(types.int64, -1)
        builder.cmpxchg(ptr, minus_one, args[2], "seq_cst", "seq_cst")
        return context.get_dummy_value()

    return types.none(array, index, new), codegen


@njit(inline="always")
def _next_chunk(bounds, state, claims, max_claims):
    """The next chunk to compute, or -1: none left, or ``max_claims`` reached."""
    if claims >= max_claims:
        return -1
    chunk = _fetch_add(state, 0, 1)
    return chunk if chunk < bounds.size - 1 else -1


@njit(inline="always", fastmath=_FAST)
def _matvec_loop(Z, ST, VT, kind, c, out, i0, i1):
    m = ST.shape[1]
    p = VT.shape[0]
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    kv = np.empty(BLOCK, dtype=Z.dtype)
    acc = np.zeros(p, dtype=np.float64)
    for i in range(i0, i1):
        acc[:] = 0.0
        for j0 in range(0, m, BLOCK):
            nb = min(BLOCK, m - j0)
            _sq_dist(Z[i], ST, j0, nb, r2)
            _kernel(kind, r2, kv, nb, c)
            _add_channels(kv, VT, j0, nb, acc, c[2])
        for q in range(p):
            out[i, q] = acc[q]


@_jit
def matvec_rows(Z, ST, VT, kind, c, out, i0, i1):
    """``out[i, q] = Σ_j κ(|z_i - s_j|²) VT[q, j]`` (scaled coordinates).  The Gaussian
    kernel gets the loop with the kernel a constant, so that its test compiles away: behind
    a test at every block the loop ran about 10% slower, as ``_witness_rows`` did."""
    if kind == GAUSSIAN:
        _matvec_loop(Z, ST, VT, GAUSSIAN, c, out, i0, i1)
    else:
        _matvec_loop(Z, ST, VT, kind, c, out, i0, i1)


@_jit
def _witness_rows(Z, ST, VT, a, c, val, grad, i0, i1):
    """``value_grad_rows`` for the Gaussian kernel and one channel (the witness of the MMD
    flows): the last coordinate, the exponential, the value and the gradient factor
    ``-γ a = κ a`` in one pass.  A loop of its own: inside the general one, behind a test of
    the kernel at every block, it ran 10-15% slower (N = 10⁴ against 2·10⁴ sources, d = 2)."""
    d = Z.shape[1]
    m = ST.shape[1]
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    ga = np.empty(BLOCK, dtype=Z.dtype)
    g = np.zeros(d, dtype=np.float64)
    half, zero = c[0], c[2]  # read once: a store to ga could alias c for all LLVM knows
    for i in range(i0, i1):
        total = 0.0
        g[:] = 0.0
        z = Z[i]
        zl = z[d - 1]
        for j0 in range(0, m, BLOCK):
            nb = min(BLOCK, m - j0)
            _sq_dist(z, ST, j0, nb, r2, d - 1)
            last = ST[d - 1, j0:j0 + nb]
            v = VT[0, j0:j0 + nb]
            aj = a[j0:j0 + nb]
            s = zero
            for j in range(nb):
                t = last[j] - zl
                e = fast_exp(-half * (r2[j] + t * t))
                s += e * v[j]
                ga[j] = e * aj[j]
            total += s
            _add_first_moment(ga, z, ST, j0, nb, g, zero)
        val[i, 0] = total
        for k in range(d):
            grad[i, k] = g[k]


@_jit
def value_grad_rows(Z, ST, VT, a, kind, c, val, grad, i0, i1):
    """``Σ_j κ_ij VT[:, j]`` and ``Σ_j γ_ij a_j (z_i - s_j) = Σ_j (-γ_ij a_j)(s_j - z_i)``
    (scaled coordinates)."""
    if kind == GAUSSIAN and VT.shape[0] == 1:
        _witness_rows(Z, ST, VT, a, c, val, grad, i0, i1)
        return
    d = Z.shape[1]
    m = ST.shape[1]
    p = VT.shape[0]
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    kv = np.empty(BLOCK, dtype=Z.dtype)
    ga = np.empty(BLOCK, dtype=Z.dtype)
    acc = np.zeros(p, dtype=np.float64)
    g = np.zeros(d, dtype=np.float64)
    for i in range(i0, i1):
        acc[:] = 0.0
        g[:] = 0.0
        z = Z[i]
        for j0 in range(0, m, BLOCK):
            nb = min(BLOCK, m - j0)
            _sq_dist(z, ST, j0, nb, r2)
            _kernel(kind, r2, kv, nb, c)
            _add_channels(kv, VT, j0, nb, acc, c[2])
            _grad_factor(kind, r2, kv, ga, a, j0, nb, c)
            _add_first_moment(ga, z, ST, j0, nb, g, c[2])
        for q in range(p):
            val[i, q] = acc[q]
        for k in range(d):
            grad[i, k] = g[k]


@_jit
def logsumexp_rows(Z, ST, logv, c, out, i0, i1):
    """``log Σ_j exp(logv_j - |z_i - s_j|² / 2)``, streamed with a running maximum."""
    m = ST.shape[1]
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    shift = np.empty(1, dtype=Z.dtype)  # the running maximum, in the dtype of the loop
    half = c[0]  # read once: a store to r2 could alias c for all LLVM knows
    for i in range(i0, i1):
        top = -np.inf
        total = 0.0
        for j0 in range(0, m, BLOCK):
            nb = min(BLOCK, m - j0)
            _sq_dist(Z[i], ST, j0, nb, r2)
            lv = logv[j0:j0 + nb]
            block_top = -np.inf
            for j in range(nb):
                r2[j] = lv[j] - half * r2[j]
                block_top = max(block_top, r2[j])
            if block_top > top:
                total *= np.exp(top - block_top)
                top = block_top
            shift[0] = top
            t = shift[0]
            s = c[2]
            for j in range(nb):
                s += fast_exp(r2[j] - t)
            total += s
        out[i] = top + np.log(total)


@_jit
def softmax_moments_rows(Z, ST, cw, c, mass, first, i0, i1):
    """``Σ_j E_ij`` and ``Σ_j E_ij (s_j - z_i)``, ``E_ij = exp(cw_j - |z_i - s_j|² / 2)``
    (scaled coordinates)."""
    d = Z.shape[1]
    m = ST.shape[1]
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    g = np.zeros(d, dtype=np.float64)
    half = c[0]  # read once: a store to r2 could alias c for all LLVM knows
    for i in range(i0, i1):
        total = 0.0
        g[:] = 0.0
        z = Z[i]
        for j0 in range(0, m, BLOCK):
            nb = min(BLOCK, m - j0)
            _sq_dist(z, ST, j0, nb, r2)
            w = cw[j0:j0 + nb]
            s = c[2]
            for j in range(nb):
                r2[j] = fast_exp(w[j] - half * r2[j])
                s += r2[j]
            total += s
            _add_first_moment(r2, z, ST, j0, nb, g, c[2])
        mass[i] = total
        for k in range(d):
            first[i, k] = g[k]


# --- the drivers: chunks claimed from ``state[0]``, finished ones marked in ``owner`` ------------
@_jit
def matvec_chunks(Z, ST, VT, kind, c, out, bounds, state, owner, me, max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        matvec_rows(Z, ST, VT, kind, c, out, bounds[k], bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


@_jit
def value_grad_chunks(Z, ST, VT, a, kind, c, val, grad, bounds, state, owner, me, max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        value_grad_rows(Z, ST, VT, a, kind, c, val, grad, bounds[k], bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


@_jit
def logsumexp_chunks(Z, ST, logv, c, out, bounds, state, owner, me, max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        logsumexp_rows(Z, ST, logv, c, out, bounds[k], bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


@_jit
def softmax_moments_chunks(Z, ST, cw, c, mass, first, bounds, state, owner, me, max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        softmax_moments_rows(Z, ST, cw, c, mass, first, bounds[k], bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


# --- the blocked reductions, for d >= BLOCKED_MIN_DIMS ---------------------------------------
# From d of about 8, the d subtractions and multiply-adds of each distance, and the d of each
# first moment, cost more than the exponential: each is a pass over an L1 buffer per
# coordinate.  Here a tile of ``TILE_ROWS`` rows against a block of ``BLOCK`` sources gets its
# inner products from one matrix product (BLAS, with the accumulators in registers):
# ``r² = |z|² + |s|² - 2 z·s``, clamped at 0, in float64 whatever the data's dtype; and every
# first moment ``Σ_j w_ij s_j`` from a second product.  The coordinates are centred on the
# sources' mean first (distances do not change), so that |z|² and |s|² stay of the order of
# r² for data far from the origin.  Where ``r² < SMALL_R2 (|z|² + |s|²)`` the product has lost
# too many digits (a pair near or at ``r = 0``, where the cusp kernels need ``r`` itself): that
# pair's distance is computed again from differences, exactly as in the per-pair loops.
# Rounding leaves an error of about (d + 2)·2⁻⁵³·(|z|² + |s|²) in r², so at most
# 2⁻⁴⁴ ≈ 6·10⁻¹⁴ relative to r² (d ≤ 128) where the product is kept.
SMALL_R2 = 1.0 / 512.0
TILE_ROWS = 32
# Rows per tile times coordinates at most this: each product then has at most
# 256 · 1024 = 2¹⁸ multiply-adds, which OpenBLAS (SciPy's, which Numba calls) computes on the
# calling thread; above that it would start threads of its own inside every helper thread's
# product.
TILE_ROW_COORDS = 1024


@njit(inline="always")
def _tile_rows(d):
    return max(1, min(TILE_ROWS, TILE_ROW_COORDS // d))


@njit(inline="always", fastmath=_FAST)
def _sq_dist_tile(Z64, nz, SB, ns, S64, i0, nr, b, nb, dot, r2t):
    """``r2t[q, j] = |z_{i0+q} - s_{b·BLOCK+j}|²`` for ``q < nr``, ``j < nb``: from the
    product ``Z64[i0:i0+nr] @ SB[b]``, or from differences where it cancels."""
    j0 = b * BLOCK
    d = Z64.shape[1]
    np.dot(Z64[i0:i0 + nr], SB[b], dot[:nr])
    for q in range(nr):
        zz = nz[i0 + q]
        dq = dot[q]
        rq = r2t[q]
        small = 0
        for j in range(nb):
            both = zz + ns[j0 + j]
            v = both - 2.0 * dq[j]
            small += v < SMALL_R2 * both
            rq[j] = max(v, 0.0)
        if small:
            z = Z64[i0 + q]
            for j in range(nb):
                both = zz + ns[j0 + j]
                if rq[j] < SMALL_R2 * both:
                    s = S64[j0 + j]
                    t = 0.0
                    for k in range(d):
                        u = s[k] - z[k]
                        t += u * u
                    rq[j] = t


@_jit
def value_grad_tiles(Z, Z64, nz, SB, ns, S64, SP, VT, a, kind, c, val, grad, i0, i1):
    """``value_grad_rows`` with blocked distances and first moments (``SP``: the sources,
    in the loop's dtype, padded with zero rows to whole blocks)."""
    d = Z.shape[1]
    m = ns.shape[0]
    p = VT.shape[0]
    r2t = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    dot = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    kv = np.empty(BLOCK, dtype=Z.dtype)
    gat = np.zeros((TILE_ROWS, BLOCK), dtype=Z.dtype)
    moment = np.empty((TILE_ROWS, d), dtype=Z.dtype)
    acc = np.zeros((TILE_ROWS, p), dtype=np.float64)
    g = np.zeros((TILE_ROWS, d), dtype=np.float64)
    mass = np.zeros(TILE_ROWS, dtype=np.float64)
    tile = _tile_rows(Z.shape[1])
    for t0 in range(i0, i1, tile):
        nr = min(tile, i1 - t0)
        acc[:] = 0.0
        g[:] = 0.0
        mass[:] = 0.0
        for b in range(SB.shape[0]):
            j0 = b * BLOCK
            nb = min(BLOCK, m - j0)
            _sq_dist_tile(Z64, nz, SB, ns, S64, t0, nr, b, nb, dot, r2t)
            for q in range(nr):
                rq = r2t[q]
                for j in range(nb):
                    r2[j] = rq[j]
                _kernel(kind, r2, kv, nb, c)
                _add_channels(kv, VT, j0, nb, acc[q], c[2])
                gq = gat[q]
                _grad_factor(kind, r2, kv, gq, a, j0, nb, c)
                s = c[2]
                for j in range(nb):
                    s += gq[j]
                mass[q] += s
                gq[nb:] = 0.0
            np.dot(gat[:nr], SP[j0:j0 + BLOCK], moment[:nr])
            for q in range(nr):
                for k in range(d):
                    g[q, k] += moment[q, k]
        for q in range(nr):
            for e in range(p):
                val[t0 + q, e] = acc[q, e]
            for k in range(d):
                grad[t0 + q, k] = g[q, k] - mass[q] * Z[t0 + q, k]


@_jit
def matvec_tiles(Z, Z64, nz, SB, ns, S64, VT, kind, c, out, i0, i1):
    """``matvec_rows`` with blocked distances."""
    m = ns.shape[0]
    p = VT.shape[0]
    r2t = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    dot = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    kv = np.empty(BLOCK, dtype=Z.dtype)
    acc = np.zeros((TILE_ROWS, p), dtype=np.float64)
    tile = _tile_rows(Z.shape[1])
    for t0 in range(i0, i1, tile):
        nr = min(tile, i1 - t0)
        acc[:] = 0.0
        for b in range(SB.shape[0]):
            j0 = b * BLOCK
            nb = min(BLOCK, m - j0)
            _sq_dist_tile(Z64, nz, SB, ns, S64, t0, nr, b, nb, dot, r2t)
            for q in range(nr):
                rq = r2t[q]
                for j in range(nb):
                    r2[j] = rq[j]
                _kernel(kind, r2, kv, nb, c)
                _add_channels(kv, VT, j0, nb, acc[q], c[2])
        for q in range(nr):
            for e in range(p):
                out[t0 + q, e] = acc[q, e]


@_jit
def logsumexp_tiles(Z, Z64, nz, SB, ns, S64, logv, c, out, i0, i1):
    """``logsumexp_rows`` with blocked distances."""
    m = ns.shape[0]
    r2t = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    dot = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    r2 = np.empty(BLOCK, dtype=Z.dtype)
    top = np.empty(TILE_ROWS, dtype=Z.dtype)
    total = np.zeros(TILE_ROWS, dtype=np.float64)
    tile = _tile_rows(Z.shape[1])
    for t0 in range(i0, i1, tile):
        nr = min(tile, i1 - t0)
        top[:] = -np.inf
        total[:] = 0.0
        for b in range(SB.shape[0]):
            j0 = b * BLOCK
            nb = min(BLOCK, m - j0)
            _sq_dist_tile(Z64, nz, SB, ns, S64, t0, nr, b, nb, dot, r2t)
            lv = logv[j0:j0 + nb]
            for q in range(nr):
                rq = r2t[q]
                block_top = -np.inf
                for j in range(nb):
                    r2[j] = lv[j] - c[0] * rq[j]
                    block_top = max(block_top, r2[j])
                if block_top > top[q]:
                    total[q] *= np.exp(top[q] - block_top)
                    top[q] = block_top
                t = top[q]
                s = c[2]
                for j in range(nb):
                    s += fast_exp(r2[j] - t)
                total[q] += s
        for q in range(nr):
            out[t0 + q] = top[q] + np.log(total[q])


@_jit
def softmax_moments_tiles(Z, Z64, nz, SB, ns, S64, SP, cw, c, mass, first, i0, i1):
    """``softmax_moments_rows`` with blocked distances and first moments."""
    d = Z.shape[1]
    m = ns.shape[0]
    r2t = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    dot = np.empty((TILE_ROWS, BLOCK), dtype=np.float64)
    et = np.zeros((TILE_ROWS, BLOCK), dtype=Z.dtype)
    moment = np.empty((TILE_ROWS, d), dtype=Z.dtype)
    g = np.zeros((TILE_ROWS, d), dtype=np.float64)
    total = np.zeros(TILE_ROWS, dtype=np.float64)
    tile = _tile_rows(Z.shape[1])
    for t0 in range(i0, i1, tile):
        nr = min(tile, i1 - t0)
        g[:] = 0.0
        total[:] = 0.0
        for b in range(SB.shape[0]):
            j0 = b * BLOCK
            nb = min(BLOCK, m - j0)
            _sq_dist_tile(Z64, nz, SB, ns, S64, t0, nr, b, nb, dot, r2t)
            w = cw[j0:j0 + nb]
            for q in range(nr):
                rq = r2t[q]
                eq = et[q]
                s = c[2]
                for j in range(nb):
                    eq[j] = fast_exp(w[j] - c[0] * rq[j])
                    s += eq[j]
                total[q] += s
                eq[nb:] = 0.0
            np.dot(et[:nr], SP[j0:j0 + BLOCK], moment[:nr])
            for q in range(nr):
                for k in range(d):
                    g[q, k] += moment[q, k]
        for q in range(nr):
            mass[t0 + q] = total[q]
            for k in range(d):
                first[t0 + q, k] = g[q, k] - total[q] * Z[t0 + q, k]


@_jit
def matvec_tiles_chunks(Z, Z64, nz, SB, ns, S64, VT, kind, c, out, bounds, state, owner, me,
                        max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        matvec_tiles(Z, Z64, nz, SB, ns, S64, VT, kind, c, out, bounds[k], bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


@_jit
def value_grad_tiles_chunks(Z, Z64, nz, SB, ns, S64, SP, VT, a, kind, c, val, grad, bounds,
                            state, owner, me, max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        value_grad_tiles(Z, Z64, nz, SB, ns, S64, SP, VT, a, kind, c, val, grad, bounds[k],
                         bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


@_jit
def logsumexp_tiles_chunks(Z, Z64, nz, SB, ns, S64, logv, c, out, bounds, state, owner, me,
                           max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        logsumexp_tiles(Z, Z64, nz, SB, ns, S64, logv, c, out, bounds[k], bounds[k + 1])
        _claim(owner, k, me)
        claims += 1


@_jit
def softmax_moments_tiles_chunks(Z, Z64, nz, SB, ns, S64, SP, cw, c, mass, first, bounds,
                                 state, owner, me, max_claims):
    claims = 0
    while True:
        k = _next_chunk(bounds, state, claims, max_claims)
        if k < 0:
            return claims
        softmax_moments_tiles(Z, Z64, nz, SB, ns, S64, SP, cw, c, mass, first, bounds[k],
                              bounds[k + 1])
        _claim(owner, k, me)
        claims += 1
