"""The feed-forward GEGLU on the step's own shapes, alone: diffusers' form compiled against GEGLU in the
projection's epilogue, as Triton kernels.

The thirteenth section's kernel list has the GEGLU pointwise kernels at 25 ms of a 406 ms step (~3.4 TB/s: the
(M, 2N) projection read back, (M, N) written) after cuBLAS products that write that projection. A kernel that
takes h * gelu(g) in the product's epilogue never writes the projection: here two forms of it,

- `two_dots`: one program computes a (BM, BN) tile of both halves, two float32 accumulators over the same rows
  of x (h = x W_h^T + b_h, g = x W_g^T + b_g), and writes h * gelu(g) once;
- `interleaved`: the weight's rows reordered once (blocks of 64 rows of W_h and of W_g alternating), so one
  product of a (BM, BN) tile holds BN/2 columns of h and the same BN/2 of g: a plain GEMM tile (up to 128 x 256,
  the Hopper kernels' own), split in the epilogue;

against

- `unfused`: F.linear, chunk, h * gelu(g) compiled (what the UNet runs);
- `linear`: F.linear alone (cuBLAS): the product's own cost, the floor for a fused kernel at cuBLAS's rate.

Per feed-forward shape of a 4-clip step (8 latents x 24 frames; the spatial and temporal transformers' have the
same): ms per call (CUDA events, 20 calls back to back after 2), TFLOP/s of the product (2 M K 2N), the error
against float32. OUT/geglu.json. The two forms each keep the same arithmetic: float32 sums, bias and exact GELU
in float32, one rounding (diffusers rounds the projection first).

    python benchmarks/geglu_probe.py OUT          # GPU
    python benchmarks/geglu_probe.py OUT --cpu    # smoke run: the kernels in Triton's interpreter, small shapes
"""
import json
import os
import sys
from functools import partial
from pathlib import Path

if "--cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from v2v.bench import cuda_seconds_per_call  # noqa: E402

# (tokens M, channels K, GEGLU width N, calls a step): 8 latents x 24 frames x h x w tokens per level; each level
# has 5 spatial and 5 temporal feed-forwards (+ the input temporal transformer at the top), the mid block 2.
SHAPES = [(192 * 40 * 72, 320, 1280, 11), (192 * 20 * 36, 640, 2560, 10), (192 * 10 * 18, 1280, 5120, 10),
          (192 * 5 * 9, 1280, 5120, 2)]
PAIR = 64  # `interleaved`: rows of W_h, then of W_g, alternating in blocks of PAIR
# (form, BM, BN, BK, warps, stages); `two_dots` BN is per half (its program holds 2 BN columns)
TILES = [("two_dots", 128, 64, 64, 4, 3), ("two_dots", 128, 128, 64, 8, 3), ("two_dots", 128, 128, 32, 8, 5),
         ("interleaved", 128, 128, 64, 4, 3), ("interleaved", 128, 128, 64, 4, 4), ("interleaved", 128, 256, 64, 8, 3),
         ("interleaved", 128, 256, 64, 8, 4), ("interleaved", 128, 256, 32, 8, 5), ("interleaved", 64, 256, 64, 4, 3),
         ("interleaved", 256, 128, 64, 8, 3), ("interleaved", 128, 128, 64, 8, 4)]


@triton.jit
def _gelu_mul(h, g):
    return h * (0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)))  # h * gelu(g), exact GELU


@triton.jit
def _tile(M: tl.constexpr, n_cols: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    # GROUP_M row tiles sweep the column tiles together: their rows of x and the weights stay in L2
    pid = tl.program_id(0)
    per_group = GROUP_M * tl.cdiv(n_cols, BN)
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tl.cdiv(M, BM) - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


@triton.jit
def _two_dots_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # x (M, K), w (2N, K) (nn.Linear's: rows [0, N) W_h, [N, 2N) W_g), b (2N,), o (M, N); contiguous; K % BK == 0
    pid_m, pid_n = _tile(M, N, BM, BN, GROUP_M)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_ok, n_ok = rm < M, rn < N
    x_ptrs = x_ptr + rm[:, None] * K + rk[None, :]
    wh_ptrs = w_ptr + rn[None, :].to(tl.int64) * K + rk[:, None]  # (BK, BN): W_h^T
    wg_ptrs = wh_ptrs + N * K
    acc_h = tl.zeros((BM, BN), dtype=tl.float32)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K, BK):
        x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        acc_h = tl.dot(x, tl.load(wh_ptrs, mask=n_ok[None, :], other=0.0), acc_h)
        acc_g = tl.dot(x, tl.load(wg_ptrs, mask=n_ok[None, :], other=0.0), acc_g)
        x_ptrs += BK
        wh_ptrs += BK
        wg_ptrs += BK
    acc_h += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc_g += tl.load(b_ptr + N + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = _gelu_mul(acc_h, acc_g)
    tl.store(o_ptr + rm[:, None] * N + rn[None, :], out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _interleaved_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                        PAIR: tl.constexpr):
    # w, b: the weight's rows and the bias reordered (`interleave`): rows [2 p PAIR, (2 p + 1) PAIR) are W_h's
    # block p, the next PAIR W_g's. A tile of BN product columns is BN/2 output columns. (2N) % BN == 0.
    pid_m, pid_n = _tile(M, 2 * N, BM, BN, GROUP_M)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rp = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_ok = rm < M
    x_ptrs = x_ptr + rm[:, None] * K + rk[None, :]
    w_ptrs = w_ptr + rp[None, :].to(tl.int64) * K + rk[:, None]  # (BK, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K, BK):
        acc = tl.dot(tl.load(x_ptrs, mask=m_ok[:, None], other=0.0), tl.load(w_ptrs), acc)
        x_ptrs += BK
        w_ptrs += BK
    acc += tl.load(b_ptr + rp).to(tl.float32)[None, :]
    # (BM, BN) -> (BM, BN / 2PAIR, PAIR, 2): the last axis is (h, g) of one output column
    h, g = tl.split(tl.permute(tl.reshape(acc, (BM, BN // (2 * PAIR), 2, PAIR)), (0, 1, 3, 2)))
    out = _gelu_mul(tl.reshape(h, (BM, BN // 2)), tl.reshape(g, (BM, BN // 2)))
    rn = pid_n * (BN // 2) + tl.arange(0, BN // 2)
    tl.store(o_ptr + rm[:, None] * N + rn[None, :], out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


def interleave(t: torch.Tensor, pair: int = PAIR) -> torch.Tensor:
    """(2N, ...) weight rows or bias -> blocks of `pair` rows of the first half and of the second alternating."""
    n = t.shape[0] // 2
    return t.reshape(2, n // pair, pair, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def fused(form: str, x, w, b, bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8):
    m, k = x.shape
    n = w.shape[0] // 2
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if form == "two_dots":
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _two_dots_kernel[grid](x, w, b, out, M=m, K=k, N=n, BM=bm, BN=bn, BK=bk, GROUP_M=group_m,
                               num_warps=warps, num_stages=stages)
    else:  # w, b already interleaved
        grid = (triton.cdiv(m, bm) * (2 * n // bn),)
        _interleaved_kernel[grid](x, w, b, out, M=m, K=k, N=n, BM=bm, BN=bn, BK=bk, GROUP_M=group_m, PAIR=PAIR,
                                  num_warps=warps, num_stages=stages)
    return out


def unfused(x, w, b):
    h, g = F.linear(x, w, b).chunk(2, dim=-1)
    return h * F.gelu(g)


def main(out: str, cpu: str = "") -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    cuda = not cpu
    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float16
    # smoke: rows no multiple of BM; BN 128 = one pair of 64-row blocks, BN 256 = two
    shapes = SHAPES if cuda else [(50, 64, 256, 1)]
    tiles = TILES if cuda else [("two_dots", 16, 64, 32, 4, 1), ("interleaved", 16, 128, 32, 4, 1),
                                ("interleaved", 32, 256, 64, 4, 1)]
    g = torch.Generator(dev).manual_seed(0)
    runs = []
    for m, k, n, calls in shapes:
        x = torch.randn(m, k, device=dev, generator=g).to(dtype)
        w = (torch.randn(2 * n, k, device=dev, generator=g) / k ** 0.5).to(dtype)
        b = (0.1 * torch.randn(2 * n, device=dev, generator=g)).to(dtype)
        wi, bi = interleave(w), interleave(b)
        want = unfused(x.float(), w.float(), b.float())
        flop = 2 * m * k * 2 * n
        forms = {}  # name -> one call on this shape's inputs
        if cuda:
            compiled = torch.compile(unfused, dynamic=False)
            forms = {"unfused": lambda: compiled(x, w, b), "linear": lambda: F.linear(x, w, b)}
        for tile in tiles:
            form, bm, bn, bk, warps, stages = tile
            ww, bb = (wi, bi) if form == "interleaved" else (w, b)
            forms[f"{form} {bm}x{bn}/k{bk}/w{warps}/s{stages}"] = partial(fused, form, x, ww, bb, *tile[1:])
        for name, fn in forms.items():
            try:
                with torch.no_grad():
                    y = fn()
                    ms = 1e3 * cuda_seconds_per_call(fn, repeat=20) if cuda else None
            except Exception as e:  # a tile shape that does not fit (shared memory, registers)
                print(f"M={m:6d} K={k:4d} N={n:4d} {name:34} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            err = None if name == "linear" else float((y.float() - want).norm() / want.norm())
            runs.append({"m": m, "k": k, "n": n, "calls_per_step": calls, "form": name, "ms": ms and round(ms, 4),
                         "tflops": ms and round(flop / ms / 1e9, 1), "rel_err": err})
            print(f"M={m:6d} K={k:4d} N={n:4d} x{calls:2d} {name:34} "
                  + (f"{ms:7.3f} ms {flop / ms / 1e9:6.1f} TFLOP/s " if cuda else "")
                  + (f"err {err:.1e}" if err is not None else ""), flush=True)
    if cuda:  # ms a step: each form's best tile per shape
        for prefix in ("unfused", "linear", "two_dots", "interleaved"):
            best = [min((r["ms"] for r in runs if r["form"].split()[0] == prefix and r["m"] == m), default=0) * c
                    for m, _, _, c in shapes]
            print(f"{prefix}: {sum(best):.1f} ms a step (best tile per shape)")
    info = {"card": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "triton": triton.__version__, "runs": runs}
    Path(out, "geglu.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
