"""Find the order in which this CPU's float32 ``torch.mm`` sums its products.

The oracle variant ``float32-matmul`` (harness.oracle._matmul_float32)
reproduces keras-torch's float64 cells, whose matmuls run in float32, bit
for bit, but only on a kernel whose summation orders were measured
(harness.oracle.FLOAT32_KERNELS; the record names its kernel in
``info["sgemm"]``, from backends/keras_torch_backend.sgemm_kernel).  This is
how a kernel gets measured: for each shape, random float32 operands go
through ``torch.mm`` and every way of summing the K products of one output
element is tried (every binary sum tree over them, each product rounded,
and every way of folding products in by fused multiply-adds instead); the
orders that give torch's bits on every draw are printed per output
element.  A shape is settled when each element keeps exactly one order.

    PYTHONPATH=. .venv/bin/python scripts/sgemm_orders.py 4x2x1 4x3x1 2x4x2:ta

A shape is ``MxKxN`` (a: M x K, b: K x N); ``:ta`` passes ``a`` as a
transposed view, as autograd does for the weight gradients (x^T dz,
h^T dz); ``:tb`` likewise for ``b``.  The sum trees grow as (2K-3)!! times
the fused-multiply-add folds: K <= 5 is practical.  How the harness used it
(2026-12, torch 2.13 CPU wheel, MKL 2024.2): on an AVX-512 Intel Xeon every
product of the forward and backward pass for 1 to 4 rows and 1 to 4 hidden
units; the AVX2 kernel's wider orders (lanes) were found by hand from
these per-element results.  To add a kernel: measure it, model its orders
in ``_matmul_float32``, add its width to FLOAT32_KERNELS and its
fingerprint (``sgemm_kernel()`` prints ``unmeasured:<hash>``; the full hash
is the sha256 it computes) to keras_torch_backend.SGEMM_KERNELS.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import sys

import numpy as np

from harness.oracle import _fma32

F32 = np.float32


def _splits(terms):
    first, rest = terms[0], terms[1:]
    for r in range(len(rest)):
        for comb in itertools.combinations(rest, r):
            left = (first, *comb)
            right = tuple(t for t in rest if t not in comb)
            if right:
                yield left, right


@functools.lru_cache(maxsize=None)
def orders(terms: tuple) -> list:
    """Every way of summing the products ``terms``: ("p", k) a rounded
    product, ("+", x, y) a rounded sum, ("f", k, x) fma(a_k, b_k, x)."""
    if len(terms) == 1:
        return [("p", terms[0])]
    out = [("+", x, y) for left, right in _splits(terms)
           for x in orders(left) for y in orders(right)]
    for k in terms:
        out += [("f", k, x) for x in orders(tuple(t for t in terms if t != k))]
    return out


def evaluate(order, a, b):
    """``order`` on draws a (T, K), b (T, K) of one output element."""
    if order[0] == "p":
        return (a[:, order[1]] * b[:, order[1]]).astype(F32)
    if order[0] == "+":
        return evaluate(order[1], a, b) + evaluate(order[2], a, b)
    return _fma32(a[:, order[1]], b[:, order[1]], evaluate(order[2], a, b))


def show(order) -> str:
    if order[0] == "p":
        return f"p{order[1]}"
    if order[0] == "+":
        return f"({show(order[1])} + {show(order[2])})"
    return f"fma(a{order[1]}, b{order[1]}, {show(order[2])})"


def measure(rows: int, inner: int, cols: int, draws: int, rng, ta=False, tb=False) -> dict:
    """{(i, j): [the orders that give torch.mm's bits on every draw]}."""
    import torch

    a = rng.normal(size=(draws, rows, inner)).astype(F32)
    b = rng.normal(size=(draws, inner, cols)).astype(F32)

    def tensor(m, transposed):
        return torch.tensor(m.T.copy()).t() if transposed else torch.tensor(m)
    got = np.stack([torch.mm(tensor(a[t], ta), tensor(b[t], tb)).numpy() for t in range(draws)])
    candidates = orders(tuple(range(inner)))
    return {(i, j): [show(o) for o in candidates
                     if np.array_equal(evaluate(o, a[:, i, :], b[:, :, j]), got[:, i, j])]
            for i in range(rows) for j in range(cols)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", help="MxKxN[:ta][:tb], e.g. 4x3x1 2x4x2:ta")
    parser.add_argument("--draws", type=int, default=200, help="operand pairs per shape")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for spec in args.shapes:
        dims, *flags = spec.split(":")
        try:
            rows, inner, cols = map(int, dims.split("x"))
        except ValueError:
            print(f"sgemm_orders: bad shape {spec!r}: expected MxKxN[:ta][:tb]", file=sys.stderr)
            return 2
        found = measure(rows, inner, cols, args.draws, rng, ta="ta" in flags, tb="tb" in flags)
        print(spec)
        by_order: dict[tuple, list] = {}
        for element, ok in found.items():
            by_order.setdefault(tuple(ok), []).append(element)
        for ok, elements in by_order.items():
            what = " | ".join(ok) if ok else "NO ORDER MATCHES"
            print(f"  {len(elements)} element(s) {elements[:4]}{' ...' if len(elements) > 4 else ''}: "
                  f"{what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
