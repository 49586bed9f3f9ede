"""The RLE encoder's compiled core (numba): one read of the mask, text written as it goes.

A 1280x1918 mask is 2.4 MB and a car has only ~1,000 runs, so the work is reading memory. The
mask is read once, in 4 KB chunks. Pass one sets, for every 64-bit word of the chunk, a bit
saying whether any of its bytes differs from the byte before it (64 words to a bit word):
branch-free, so the compiler vectorises it. Pass two, while the chunk is still in L1, visits the
set bits, finds the changed pixels of those words with bit tricks (count trailing zeros) and
writes each run's ``start length`` as ASCII straight into the output buffer.

Any byte value works (nonzero = car), so bool, {0,1} and {0,255} masks need no conversion.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

CHUNK = 512  # words per chunk (4 KB of mask): flags and words stay in L1 between the passes
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
AHEAD = 2 * CHUNK  # prefetch distance in words
# the intrinsic's name carries the pointer type: opaque pointers from LLVM 15 on
_PREFETCH = "llvm.prefetch.p0" if llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the cache to fetch ``arr[idx]`` (read, keep in all levels); never faults."""

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), _PREFETCH
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _put_int(out: np.ndarray, pos: int, v: int) -> int:
    """ASCII of v >= 0 at out[pos:], then a space; returns the position after the space.

    v < 10**8 (every pixel index of a Carvana mask): the eight digits are computed at once in
    the lanes of one 64-bit word (SWAR: v -> 2 x 4 -> 4 x 2 -> 8 x 1 digits by multiply-shift),
    leading zeros dropped, then stored; ``out`` needs 8 bytes of slack after the text.
    """
    if v >= 100_000_000:
        return _put_int_slow(out, pos, v)
    u = np.uint64(v)
    hi = u // np.uint64(10_000)
    x = hi | ((u - hi * np.uint64(10_000)) << np.uint64(32))  # 2 lanes of 4 digits
    q = ((x * np.uint64(5243)) >> np.uint64(19)) & np.uint64(0x0000007F0000007F)  # lane // 100
    x = q | ((x - q * np.uint64(100)) << np.uint64(16))  # 4 lanes of 2 digits
    q = ((x * np.uint64(103)) >> np.uint64(10)) & np.uint64(0x000F000F000F000F)  # lane // 10
    x = q | ((x - q * np.uint64(10)) << np.uint64(8))  # 8 digits, the most significant first
    skip = np.uint64(7) if x == 0 else trailing_zeros(x) >> np.uint64(3)  # leading zero digits
    x = (x + np.uint64(0x3030303030303030)) >> (skip << np.uint64(3))
    for k in range(8):
        out[pos + k] = np.uint8((x >> np.uint64(8 * k)) & np.uint64(255))
    end = pos + 8 - int(skip)
    out[end] = 32
    return end + 1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _put_int_slow(out: np.ndarray, pos: int, v: int) -> int:
    """Any v >= 0, digit by digit (masks of more than 10**8 pixels)."""
    n, t = 1, v
    while t >= 10:
        t //= 10
        n += 1
    for i in range(pos + n - 1, pos - 1, -1):
        out[i] = 48 + v % 10
        v //= 10
    out[pos + n] = 32
    return pos + n + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _change(out: np.ndarray, pos: int, p: int, inside: bool, start: int) -> tuple[int, int]:
    """Pixel p differs from the one before: a run ends (write its length) or starts (write its
    1-indexed start). Returns the new text position and run start."""
    if inside:
        return _put_int(out, pos, p - start), start
    return _put_int(out, pos, p + 1), p


@numba.njit(cache=True, nogil=True, inline="always")
def _changed(x: np.uint64, prev: np.uint64) -> bool:
    """Whether any byte of word ``x`` differs from the byte before it (``prev``: the previous
    word's last byte, in the low byte)."""
    return (x ^ ((x << np.uint64(8)) | prev)) != 0


@numba.njit(cache=True, nogil=True, inline="always")
def _word_changes(
    out: np.ndarray, pos: int, x: np.uint64, i: int, inside: bool, start: int
) -> tuple[int, int, bool]:
    """Write the run changes inside word ``i`` (value ``x``); ``pos`` -1 when ``out`` is full."""
    cap = out.size - 64  # room for one more ``start length `` pair, 20 digits each at most
    # bytes -> 0x01 where the pixel is car, then 0x01 where it differs from the pixel before
    # it (whose state is `inside`)
    car = ((((x & _LOW7) + _LOW7) | x) & _HIGH) >> np.uint64(7)
    d = car ^ ((car << np.uint64(8)) | np.uint64(inside))
    while d != 0:
        if pos > cap:
            return -1, start, inside
        pos, start = _change(out, pos, 8 * i + (trailing_zeros(d) >> 3), inside, start)
        d &= d - np.uint64(1)
        inside = not inside
    return pos, start, inside


@numba.njit(cache=True, nogil=True, boundscheck=False)
def encode_into(b: np.ndarray, out: np.ndarray) -> int:
    """Write the RLE text of 1-D uint8 pixels ``b`` into ``out``; return its length, or -1 if
    ``out`` is too small. The text ends with a space (the caller drops it)."""
    n = b.size
    words = b[: n // 8 * 8].view(np.uint64)  # viewed here: one array fewer to check per call
    m = words.size
    sh56, one = np.uint64(56), np.uint64(1)
    blocks = CHUNK // 64
    bits = np.zeros(blocks, dtype=np.uint64)  # bit j of bits[g]: word 64 * g + j changed
    cap = out.size - 64  # room for one more ``start length `` pair, 20 digits each at most
    pos = 0
    inside = False  # the previous pixel was car
    start = 0
    for c0 in range(0, m, CHUNK):
        size = min(CHUNK, m - c0)
        blk = words[c0 : c0 + size]
        if c0 + AHEAD + CHUNK <= m:
            for q in range(c0 + AHEAD, c0 + AHEAD + CHUNK, 8):  # one hint per 64-byte line
                _prefetch(words, q)
        # pass 1, branch-free (vectorised): does any byte of a word differ from the byte before?
        # Each answer lands straight in a bit of its block's word (pixel -1 is background, as
        # in the idiom's padding); +7-16% masks/s over flag bytes packed later
        before = words[c0 - 1] >> sh56 if c0 > 0 else np.uint64(0)
        if size == CHUNK:
            for g in range(blocks):
                acc = np.uint64(0)
                for j in range(64):
                    k = 64 * g + j
                    prev = blk[k - 1] >> sh56 if k > 0 else before
                    acc |= np.uint64(_changed(blk[k], prev)) << np.uint64(j)
                bits[g] = acc
        else:  # the last, partial chunk
            bits[:] = 0
            for k in range(size):
                prev = blk[k - 1] >> sh56 if k > 0 else before
                if _changed(blk[k], prev):
                    bits[k // 64] |= one << np.uint64(k % 64)
        # pass 2, while the chunk is still in L1: visit the changed words (count trailing zeros)
        for g in range(blocks):
            word_bits = bits[g]
            while word_bits != 0:
                k = 64 * g + int(trailing_zeros(word_bits))
                word_bits &= word_bits - one
                pos, start, inside = _word_changes(out, pos, blk[k], c0 + k, inside, start)
                if pos < 0:
                    return -1
    for p in range(8 * m, n):  # the bytes after the last whole word
        if (b[p] != 0) != inside:
            if pos > cap:
                return -1
            pos, start = _change(out, pos, p, inside, start)
            inside = not inside
    if inside:  # a run touching the last pixel
        pos = _put_int(out, pos, n - start)
    return pos
