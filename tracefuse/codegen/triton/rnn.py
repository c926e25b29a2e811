"""The fused recurrent scans: LSTM, GRU and Elman RNN layers (forward and backward) and cells on a
device, with the semantics of their NumPy implementations (codegen/numpy/rnn.py).

A layer is one direction of one layer, run as two kernels:

1. the input projection of every step at once, `x @ W_ih^T + biases`, a tiled `tl.dot` GEMM over
   the T * B (step, sequence) rows, written where the scan reads it (the workspace's gate block,
   or for the RNN y itself, or scratch when y is a half type);
2. the scan: one program per BLOCK_B sequences owns every hidden unit of its sequences and loops
   over time inside the kernel. Each step computes `h_prev @ W_hh^T` in chunks of BLOCK_H hidden
   units (all gates of a chunk together, so the gate math and the state update happen in
   registers right after the recurrent matmul), writes y, the workspace and the new state. No
   program waits for another (so the interpreter, which runs programs one after another, works);
   the state lives in a small double-buffered scratch array (step s reads slot s % 2 and writes
   the other), and `tl.debug_barrier()` after each step makes it visible to every warp.

Packed batches are masked with lengths: step t is active for sequence b iff t < lengths[b]; an
inactive step keeps the state and writes zeros to y. The workspace (an aux output, the compute
type) has the NumPy implementation's layout (ir/shapes.py WORKSPACE_LAYOUT): lstm gate
activations in the order (i, f, o, g) and the cell state after each step, gru gate activations
(r, z, n) and W_hn h + b_hn; rnn nothing.

The backward op is a reverse scan that stores the gradients of every step's gate pre-activations
(zero on masked steps) and carries dh (and dc) from step to step, then GEMMs over those: dx, and
dW with db as the column sums of the same tiles (one launch per weight).

Feature sizes (H, P, gate and input widths) are `tl.constexpr`, so the chunk loops have static
bounds; the loops over run-time counts (the time steps, the T * B rows of the weight gradients)
are `while` loops, which Triton 3.6's interpreter can run (it cannot take `range()` over a
run-time scalar with NumPy 2). Scalar conditions are never and-ed into masks (Triton 3.9's
interpreter rejects such masks): per-sequence vectors are built instead.

Everything computes in the compute type (float32 for float16/bfloat16, rounded once on the way
out). tanh has no Triton primitive the interpreter runs, so it is written with exp and log
(expm1 by Kahan's trick, accurate to a few ulp); sigmoid(z) = tanh(z / 2) / 2 + 1/2 as on the CPU.
"""
from __future__ import annotations

import weakref

import numpy as np

from ... import dtypes
from ...ir.shapes import WORKSPACE_WIDTH
from .heuristics import block_size
from .launch import emitter, tl_type
from .matmul import native_half_dot
from .pointwise import store_cast


def scan_blocks(batch, hidden, state=None, split=False) -> dict:
    """Scan tiles: 16 sequences per program, chunks of 16 or 32 hidden units (and, for the LSTM's
    projected state, BLOCK_P state columns), reductions 16 at a time (fp32/fp64 dots run on FMA
    units, whose operand registers grow with K). A scan split over many programs (`split`) gives
    each 16-unit chunks and 64-wide reductions: few chunks per program, fewer loop trips."""
    if split:
        return dict(BLOCK_B=16, BLOCK_H=16, BLOCK_K=block_size(state or hidden, high=64))
    blocks = dict(BLOCK_B=16, BLOCK_H=block_size(hidden, high=32), BLOCK_K=16)
    if state is not None:
        blocks["BLOCK_P"] = block_size(state, high=32)
    return blocks


def scan_split(call, batch, hidden, can_split=True):
    """How a forward scan spreads over programs: (blocks, grid, barrier counters, constexprs).
    Each batch block of 16 sequences gets as many programs as the device runs at once (divided
    among the blocks), each owning H_SLICE hidden units and waiting for the others after every
    step; they are launched cooperatively, so they are resident together. Where programs run one
    after another (the interpreter), or `can_split` is false, one program owns all hidden units."""
    width = call.backend.resident_programs(call.device) if can_split else 1
    blocks = scan_blocks(batch, hidden, split=width > 1)
    batch_blocks = _cdiv(batch, blocks["BLOCK_B"])
    chunks = _cdiv(hidden, blocks["BLOCK_H"])
    chunks_per_program = _cdiv(chunks, max(1, min(chunks, width // max(batch_blocks, 1))))
    programs = _cdiv(chunks, chunks_per_program)
    constexprs = dict(H_SLICE=chunks_per_program * blocks["BLOCK_H"], H_PROGRAMS=programs)
    if programs > 1:
        constexprs["launch_cooperative_grid"] = True
    barrier = _barrier_counters(call) if programs > 1 else call.empty((1,), np.int32)  # (never read)
    return blocks, (batch_blocks, programs), barrier, constexprs


# backend -> {(device index, stream): barrier counters}, zero between scans
_BARRIERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _barrier_counters(call):
    """Zeroed int32 counters, one per batch block a split scan can have on this device (at most
    its resident programs), kept per device and stream for good: a scan leaves them zero again
    as it ends (its last program out resets them), so no launch clears them, and the CUDA graphs
    that captured a scan keep reading the same memory. Scans queued on one stream run one after
    another; scans on different streams get different counters."""
    stream = call.backend.stream_of(call.device)
    per_backend = _BARRIERS.setdefault(call.backend, {})
    key = (call.device.index, id(stream))
    if key not in per_backend:
        width = call.backend.resident_programs(call.device)
        per_backend[key] = (stream, call.backend.from_host(np.zeros(width, np.int32), call.device))
    return per_backend[key][1]


def gemm_blocks(m, n, k) -> dict:
    return dict(BLOCK_M=block_size(m, high=64), BLOCK_N=block_size(n, high=64), BLOCK_K=block_size(k, high=32))


# --- generated source: shared pieces --------------------------------------------------------------

_MATH = '''
@triton.jit
def _tanh(x):
    """tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), expm1 by Kahan's trick: accurate near 0."""
    a = tl.abs(x)
    a = tl.where(a > 20.0, 20.0, a)  # tanh(20) rounds to 1 even in float64; keeps exp(-2a) > 0
    y = -2.0 * a
    u = tl.exp(y)
    expm1 = tl.where(u == 1.0, y, (u - 1.0) * y / tl.log(u))
    t = -expm1 / (2.0 + expm1)
    return tl.where(x < 0, -t, t)


@triton.jit
def _sigmoid(x):
    """sigmoid(x) = tanh(x / 2) / 2 + 1/2, as the NumPy implementation computes it."""
    return 0.5 * _tanh(0.5 * x) + 0.5

'''


def _output_helper(dtype) -> str:
    return f'''
@triton.jit
def _to_output(value):
    """A compute-type value as the output type (bfloat16 rounds to nearest even)."""
    return {store_cast("value", _numpy_type(dtype))}

'''


def _numpy_type(dtype) -> np.dtype:
    return dtype.np_type if isinstance(dtype, dtypes.dtype) else np.dtype(dtype)


def _source(kernel, compute, out_dtype, math=True) -> str:
    """A kernel template filled in for its types, after the helpers it calls."""
    return (_MATH if math else "") + _output_helper(out_dtype) + kernel.format(CT=tl_type(compute))


def _strides(a, ndim=None):
    """`a`'s strides in elements (zeros for an absent operand of rank `ndim`)."""
    if a is None:
        return (0,) * ndim
    return tuple(s // a.itemsize for s in a.strides)


def _operand(a, placeholder, ndim):
    """(pointer, *strides) for a possibly absent operand; an absent one points at `placeholder`
    (never read: a constexpr flag switches its use off)."""
    return (placeholder if a is None else a,) + _strides(a, ndim)


def _cdiv(a, b):
    return (a + b - 1) // b


# --- the GEMMs around the scans ---------------------------------------------------------------------

_SEQUENCE_MATMUL = '''
@triton.jit
def {name}(
    # A [T, B, K], read as T * B rows (strides in elements); W [K, N] (strides)
    a_ptr, stride_at, stride_ab, stride_ak,
    w_ptr, stride_wk, stride_wn,
    # biases [N] (HAS_BIAS): b_ih added to every column, b_hh to the first N_HH
    b_ih_ptr, stride_b_ih, b_hh_ptr, stride_b_hh,
    # output [T * B, N], contiguous
    out_ptr,
    # sizes: B sequences, M = T * B rows; N columns, K reduction
    B, M,
    N: tl.constexpr, K: tl.constexpr, N_HH: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out = A @ W (+ b_ih + b_hh): one [BLOCK_M, BLOCK_N] tile per program."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    # row m is step m // B of sequence m % B
    a_rows = a_ptr + (rows // B).to(tl.int64) * stride_at + (rows % B).to(tl.int64) * stride_ab
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={CT})
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a_tile = tl.load(a_rows[:, None] + ks[None, :] * stride_ak,
                         mask=row_mask[:, None] & k_mask[None, :], other=0.0){OPERAND}
        w_tile = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                         mask=k_mask[:, None] & col_mask[None, :], other=0.0){OPERAND}
        acc += tl.dot(a_tile, w_tile{PRECISION})
    if HAS_BIAS:
        bias = tl.load(b_ih_ptr + cols * stride_b_ih, mask=col_mask, other=0.0).to({CT})
        bias += tl.load(b_hh_ptr + cols * stride_b_hh, mask=col_mask & (cols < N_HH), other=0.0).to({CT})
        acc += bias[None, :]
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :]
    tl.store(out_ptrs, _to_output(acc), mask=row_mask[:, None] & col_mask[None, :])
'''

_WEIGHT_GRAD = '''
@triton.jit
def {name}(
    # gradients of the gate pre-activations, [T * B, N] contiguous (zero on masked steps)
    dgates_ptr,
    # what each row multiplies: src[t, b, :] (strides in elements), or with PREVIOUS_STATE the
    # hidden state step t started from: y at the step before it where that step ran, else h0[b]
    src_ptr, stride_st, stride_sb, stride_sk,
    h0_ptr, stride_h0b, stride_h0k,
    lengths_ptr, stride_len,
    # outputs: dW [N, K]; db [N] (HAS_BIAS), written by the programs of column block 0
    dw_ptr, db_ptr,
    # sizes
    T, B,
    N: tl.constexpr, K: tl.constexpr, PREVIOUS_STATE: tl.constexpr, REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW = dgates^T @ src summed over every (step, sequence) row, and db = the column sums of dgates."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    gate_rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    gate_mask = gate_rows < N
    col_mask = cols < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype={CT})
    bias_acc = tl.zeros((BLOCK_N,), dtype={CT})
    m0 = 0
    while m0 < T * B:
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < T * B
        step = rows // B
        seq = (rows % B).to(tl.int64)
        dgates_t = tl.load(dgates_ptr + rows.to(tl.int64)[None, :] * N + gate_rows[:, None],
                           mask=gate_mask[:, None] & row_mask[None, :], other=0.0)
        if PREVIOUS_STATE:
            if REVERSE:
                prev = step + 1
            else:
                prev = step - 1
            from_y = row_mask & (prev >= 0) & (prev < T)
            if HAS_LENGTHS:
                length = tl.load(lengths_ptr + seq * stride_len, mask=row_mask, other=0)
                from_y = from_y & (prev < length)
            y_prev = tl.load(src_ptr + prev.to(tl.int64)[:, None] * stride_st + seq[:, None] * stride_sb
                             + cols[None, :] * stride_sk, mask=from_y[:, None] & col_mask[None, :], other=0.0)
            h0 = tl.load(h0_ptr + seq[:, None] * stride_h0b + cols[None, :] * stride_h0k,
                         mask=row_mask[:, None] & col_mask[None, :], other=0.0)
            src = tl.where(from_y[:, None], y_prev.to({CT}), h0.to({CT}))
        else:
            src = tl.load(src_ptr + step.to(tl.int64)[:, None] * stride_st + seq[:, None] * stride_sb
                          + cols[None, :] * stride_sk, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
            src = src.to({CT})
        acc += tl.dot(dgates_t, src, input_precision="ieee")
        if HAS_BIAS:
            bias_acc += tl.sum(dgates_t, axis=1)
        m0 += BLOCK_M
    dw_ptrs = dw_ptr + gate_rows.to(tl.int64)[:, None] * K + cols[None, :]
    tl.store(dw_ptrs, _to_output(acc), mask=gate_mask[:, None] & col_mask[None, :])
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(db_ptr + gate_rows, _to_output(bias_acc), mask=gate_mask)
'''


def _sequence_matmul(call, name, a, w, w_transposed, out, bias=None, bias_hh=None, n_hh=0):
    """out[T * B, N] = a[T, B, K] @ (w.T if w_transposed else w) (+ biases): one launch."""
    T, B, K = a.shape
    N = w.shape[0] if w_transposed else w.shape[1]
    M = T * B
    compute = dtypes.compute_type(dtypes.from_numpy_dtype(out.dtype))
    # half operands go into tl.dot as they are where it can take them (exact products, float32 sums)
    native = a.dtype == w.dtype and a.dtype.name in ("float16", "bfloat16") and native_half_dot(call, a.dtype)
    template = _SEQUENCE_MATMUL.replace("{name}", name).replace("{OPERAND}", "" if native else ".to({CT})")
    template = template.replace("{PRECISION}", "" if native else ', input_precision="ieee"')
    kernel = call.kernel(name, _source(template, compute, out.dtype, math=False))
    w_strides = _strides(w)[::-1] if w_transposed else _strides(w)
    blocks = gemm_blocks(M, N, K)
    call.launch(kernel, (_cdiv(M, blocks["BLOCK_M"]), _cdiv(N, blocks["BLOCK_N"])),
                a, *_strides(a), w, *w_strides, *_operand(bias, a, 1), *_operand(bias_hh, a, 1),
                out, B, M, N=N, K=K, N_HH=n_hh, HAS_BIAS=bias is not None, **blocks)


def _weight_grad(call, name, dgates, src, dw, db=None, previous_state=None):
    """dw[N, K] = sum over (t, b) of dgates[t, b]^T src-row (+ db = the sums of dgates): one launch.
    previous_state: (h0, lengths, reverse) when the rows are the states each step started from
    (src is then y)."""
    T, B, N = dgates.shape
    K = dw.shape[1]
    compute = dgates.dtype
    h0, lengths, reverse = previous_state or (None, None, False)
    kernel = call.kernel(name, _source(_WEIGHT_GRAD.replace("{name}", name), compute, dw.dtype, math=False))
    blocks = gemm_blocks(T * B, N, K)
    call.launch(kernel, (_cdiv(N, blocks["BLOCK_N"]), _cdiv(K, blocks["BLOCK_K"])),
                dgates, src, *_strides(src), *_operand(h0, src, 2), *_operand(lengths, src, 1),
                dw, dgates if db is None else db, T, B, N=N, K=K,
                PREVIOUS_STATE=previous_state is not None, REVERSE=bool(reverse), HAS_LENGTHS=lengths is not None,
                HAS_BIAS=db is not None, BLOCK_M=blocks["BLOCK_M"], BLOCK_N=blocks["BLOCK_N"],
                BLOCK_K=blocks["BLOCK_K"])


def _backward_gemms(call, op, dgates_in, dgates_hid, x, w_ih, y, h0, lengths, reverse, has_bias, out_dtype):
    """(dx, dw_ih, dw_hh[, db_ih, db_hh]) from the per-step pre-activation gradients: three launches."""
    T, B, I = x.shape
    G, P = dgates_in.shape[2], y.shape[2]
    dx = call.empty((T, B, I), out_dtype)
    _sequence_matmul(call, f"{op}_dx_kernel", dgates_in, w_ih, False, dx)
    dw_ih, dw_hh = call.empty((G, I), out_dtype), call.empty((G, P), out_dtype)
    db_ih, db_hh = (call.empty((G,), out_dtype), call.empty((G,), out_dtype)) if has_bias else (None, None)
    _weight_grad(call, f"{op}_dw_ih_kernel", dgates_in, x, dw_ih, db_ih)
    _weight_grad(call, f"{op}_dw_hh_kernel", dgates_hid, y, dw_hh, db_hh, previous_state=(h0, lengths, reverse))
    return (dx, dw_ih, dw_hh) + ((db_ih, db_hh) if has_bias else ())


# --- forward scans ------------------------------------------------------------------------------------

_SCAN_PROLOGUE = '''
    pid = tl.program_id(0)
    pid_h = tl.program_id(1)  # which H_SLICE hidden units of those sequences it computes
    spins = 0  # barrier waits so far, bounded: the cooperative launch makes every program resident, and
    # should that ever fail, the scan ends with wrong results instead of hanging the GPU
    seqs = pid * BLOCK_B + tl.arange(0, BLOCK_B)  # the sequences this program owns
    seq_mask = seqs < B
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + seqs * stride_len, mask=seq_mask, other=0)
'''


def _state_loop(size, block, source, target, value):
    """Source lines copying a [B, size] state, `block` columns at a time: `state` loaded from the
    offsets `source`, `value` stored at `target` (the sequences' rows of a contiguous [B, size])."""
    return f'''
    for s0 in range(0, {size}, {block}):
        cols = s0 + tl.arange(0, {block})
        tile_mask = seq_mask[:, None] & (cols < {size})[None, :]
        state = tl.load({source},
                        mask=tile_mask, other=0.0, cache_modifier=".cg")
        tl.store({target}_ptr + seqs[:, None] * {size} + cols[None, :], {value}, mask=tile_mask)
'''


def _copy_state(src, dst, size, block):
    """Source lines copying a [B, size] state (strided `src`) into slot 0 of its scratch `dst`."""
    return _state_loop(size, block, f"{src}_ptr + seqs[:, None] * stride_{src}_b + cols[None, :] * stride_{src}_c",
                       dst, "state.to({CT})")


def _final_state(src, dst, size, block):
    """Source lines copying the state slot the last step wrote (T % 2) to the output `dst`."""
    return _state_loop(size, block, f"{src}_ptr + (T % 2) * B * {size} + seqs[:, None] * {size} + cols[None, :]",
                       dst, "_to_output(state)")


_STEP_HEADER = '''
    step = 0
    while step < T:
        if REVERSE:
            t = T - 1 - step
        else:
            t = step
        if HAS_LENGTHS:
            active = seq_mask & (t < length)
        else:
            active = seq_mask
        keep = active[:, None]
        rows = (t * B + seqs).to(tl.int64)  # this step's rows of the [T, B, ...] arrays
'''

def _hidden_chunk(sliced):
    """The head of the loop over chunks of BLOCK_H hidden units inside a step: this program's
    H_SLICE of them (forward scans), or all H (backward scans)."""
    span, offset = ("H_SLICE", "pid_h * H_SLICE + ") if sliced else ("H", "")
    return (f"        for j0 in range(0, {span}, BLOCK_H):\n"
            f"            hidden = {offset}j0 + tl.arange(0, BLOCK_H)\n"
            "            hidden_mask = hidden < H\n"
            "            tile_mask = seq_mask[:, None] & hidden_mask[None, :]")


def _grid_sync(indent, index):
    """Source lines making the H_PROGRAMS programs of a batch block wait for each other (barrier
    number `index`: after the state copy 0, after step s s + 1): each adds one to the block's
    counter, then reads it until all have. Stores before it are visible to loads after it (the
    counter's release/acquire, and h_prev is read with .cg, from L2). Under the interpreter, and
    whenever one program owns all hidden units, H_PROGRAMS is 1 and this is a program barrier."""
    lines = ["tl.debug_barrier()",
             "if H_PROGRAMS > 1:",
             "    arrived = tl.atomic_add(barrier_ptr + pid, 1, sem=\"release\") + 1",
             f"    while (arrived < ({index} + 1) * H_PROGRAMS) & (spins < 20000000):",
             "        arrived = tl.load(barrier_ptr + pid, volatile=True)  # a plain read: no atomic contention",
             "        spins += 1",
             "    tl.atomic_add(barrier_ptr + pid, 0, sem=\"acquire\")  # orders the reads after the wait",
             "    tl.debug_barrier()"]
    return "".join(" " * indent + line + "\n" for line in lines)


# After a split scan's last step: each program counts itself out; the last one zeroes its
# batch block's counter for the next scan (every other program has left the last barrier by then).
_BARRIER_RESET = '''
    if H_PROGRAMS > 1:
        gone = tl.atomic_add(barrier_ptr + pid, 1, sem="acq_rel")
        if gone == (T + 2) * H_PROGRAMS - 1:
            tl.atomic_xchg(barrier_ptr + pid, 0)
'''


def _recurrent_matmul(size, gates):
    """Source lines adding h_prev @ W_hh^T (h_prev: the `size` state columns) to the
    pre-activations of a chunk's hidden units: `gates` names (accumulator, weight tile) per gate,
    in the order of W_hh's row blocks."""
    lines = [f"            for k0 in range(0, {size}, BLOCK_K):",
             "                ks = k0 + tl.arange(0, BLOCK_K)",
             f"                k_mask = ks < {size}",
             f"                h_prev = tl.load(h_prev_ptr + seqs[:, None] * {size} + ks[None, :],",
             "                                 mask=seq_mask[:, None] & k_mask[None, :], other=0.0,",
             "                                 cache_modifier=\".cg\")  # written by other programs",
             "                w_ptrs = w_hh_ptr + hidden[None, :] * stride_whh_g + ks[:, None] * stride_whh_k",
             "                w_mask = k_mask[:, None] & hidden_mask[None, :]"]
    for g, (acc, w) in enumerate(gates):
        rows = ["", " + H * stride_whh_g"][g] if g < 2 else f" + {g} * H * stride_whh_g"
        lines += [f"                {w} = tl.load(w_ptrs{rows}, mask=w_mask, other=0.0).to({{CT}})",
                  f'                {acc} += tl.dot(h_prev, {w}, input_precision="ieee")']
    return "\n".join(lines)


_LSTM_FORWARD = '''
@triton.jit
def lstm_layer_kernel(
    # inputs: the initial state (strides in elements), W_hh [4H, P] (gate rows i, f, g, o),
    # W_hr [P, H] (HAS_PROJ), lengths [B] (HAS_LENGTHS)
    h0_ptr, stride_h0_b, stride_h0_c,
    c0_ptr, stride_c0_b, stride_c0_c,
    w_hh_ptr, stride_whh_g, stride_whh_k,
    w_hr_ptr, stride_whr_p, stride_whr_h,
    lengths_ptr, stride_len,
    # outputs: y [T, B, P], h_n [B, P], c_n [B, H]; the workspace's blocks: gates [T, B, 4H], which
    # arrive holding x @ W_ih^T + b_ih + b_hh (i, f, g, o) and leave holding the activations
    # (i, f, o, g), and cells [T, B, H], the cell state after each step
    y_ptr, h_n_ptr, c_n_ptr, gates_ptr, cells_ptr,
    # scratch: the state, double-buffered ([2, B, P], [2, B, H]); r [B, H] = o * tanh(c) (HAS_PROJ);
    # a zeroed barrier counter per batch block (H_PROGRAMS > 1)
    h_state_ptr, c_state_ptr, r_ptr, barrier_ptr,
    # sizes
    T, B,
    H: tl.constexpr, P: tl.constexpr, REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    H_SLICE: tl.constexpr, H_PROGRAMS: tl.constexpr,
):
    """One LSTM layer in one direction: each program runs all T steps of BLOCK_B sequences, for
    H_SLICE of their hidden units."""
{prologue}{copy_h0}{copy_c0}
{start_sync}{step_header}
        h_prev_ptr = h_state_ptr + (step % 2) * B * P
        h_next_ptr = h_state_ptr + ((step + 1) % 2) * B * P
        c_prev_ptr = c_state_ptr + (step % 2) * B * H
        c_next_ptr = c_state_ptr + ((step + 1) % 2) * B * H
{hidden_chunk}
            # pre-activations of the four gates of these hidden units: the input projection ...
            gate_ptrs = gates_ptr + rows[:, None] * (4 * H) + hidden[None, :]
            pre_i = tl.load(gate_ptrs, mask=tile_mask, other=0.0)
            pre_f = tl.load(gate_ptrs + H, mask=tile_mask, other=0.0)
            pre_g = tl.load(gate_ptrs + 2 * H, mask=tile_mask, other=0.0)
            pre_o = tl.load(gate_ptrs + 3 * H, mask=tile_mask, other=0.0)
            # ... plus h_prev @ W_hh^T
{recurrent}
            gate_i = _sigmoid(pre_i)
            gate_f = _sigmoid(pre_f)
            gate_g = _tanh(pre_g)
            gate_o = _sigmoid(pre_o)
            c_prev = tl.load(c_prev_ptr + seqs[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0)
            c = gate_f * c_prev + gate_i * gate_g
            h = gate_o * _tanh(c)
            c = tl.where(keep, c, c_prev)  # a masked step keeps the cell state
            tl.store(gate_ptrs, gate_i, mask=tile_mask)
            tl.store(gate_ptrs + H, gate_f, mask=tile_mask)
            tl.store(gate_ptrs + 2 * H, gate_o, mask=tile_mask)
            tl.store(gate_ptrs + 3 * H, gate_g, mask=tile_mask)
            tl.store(cells_ptr + rows[:, None] * H + hidden[None, :], c, mask=tile_mask)
            tl.store(c_next_ptr + seqs[:, None] * H + hidden[None, :], c, mask=tile_mask)
            if HAS_PROJ:
                tl.store(r_ptr + seqs[:, None] * H + hidden[None, :], h, mask=tile_mask)
            else:
                h_old = tl.load(h_prev_ptr + seqs[:, None] * P + hidden[None, :], mask=tile_mask, other=0.0)
                tl.store(h_next_ptr + seqs[:, None] * P + hidden[None, :], tl.where(keep, h, h_old), mask=tile_mask)
                tl.store(y_ptr + rows[:, None] * P + hidden[None, :], _to_output(tl.where(keep, h, 0.0)),
                         mask=tile_mask)
        if HAS_PROJ:
            tl.debug_barrier()  # all of r is written before the projection reads whole rows
            for p0 in range(0, P, BLOCK_P):
                cols = p0 + tl.arange(0, BLOCK_P)
                col_mask = cols < P
                tile_mask = seq_mask[:, None] & col_mask[None, :]
                h = tl.zeros((BLOCK_B, BLOCK_P), dtype={CT})
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_mask = ks < H
                    r = tl.load(r_ptr + seqs[:, None] * H + ks[None, :], mask=seq_mask[:, None] & k_mask[None, :],
                                other=0.0)
                    w_hr = tl.load(w_hr_ptr + cols[None, :] * stride_whr_p + ks[:, None] * stride_whr_h,
                                   mask=k_mask[:, None] & col_mask[None, :], other=0.0).to({CT})
                    h += tl.dot(r, w_hr, input_precision="ieee")
                h_old = tl.load(h_prev_ptr + seqs[:, None] * P + cols[None, :], mask=tile_mask, other=0.0)
                tl.store(h_next_ptr + seqs[:, None] * P + cols[None, :], tl.where(keep, h, h_old), mask=tile_mask)
                tl.store(y_ptr + rows[:, None] * P + cols[None, :], _to_output(tl.where(keep, h, 0.0)),
                         mask=tile_mask)
        # the step's state is complete before the next step reads it
{step_sync}        step += 1
{barrier_reset}{final_h}{final_c}'''

_GRU_FORWARD = '''
@triton.jit
def gru_layer_kernel(
    # inputs: h0 [B, H] (strides in elements), W_hh [3H, H] (gate rows r, z, n), b_hh [3H]
    # (HAS_BIAS; only its n part is used here), lengths [B] (HAS_LENGTHS)
    h0_ptr, stride_h0_b, stride_h0_c,
    w_hh_ptr, stride_whh_g, stride_whh_k,
    b_hh_ptr, stride_b_hh,
    lengths_ptr, stride_len,
    # outputs: y [T, B, H], h_n [B, H]; the workspace's blocks: gates [T, B, 3H], which arrive
    # holding x @ W_ih^T + b_ih (+ b_hh for r and z) and leave holding the activations (r, z, n),
    # and hn [T, B, H] = h_prev @ W_hn^T + b_hn
    y_ptr, h_n_ptr, gates_ptr, hn_ptr,
    # scratch: the hidden state, double-buffered [2, B, H]; a zeroed barrier counter per batch
    # block (H_PROGRAMS > 1)
    h_state_ptr, barrier_ptr,
    # sizes
    T, B,
    H: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    H_SLICE: tl.constexpr, H_PROGRAMS: tl.constexpr,
):
    """One GRU layer in one direction: each program runs all T steps of BLOCK_B sequences, for
    H_SLICE of their hidden units."""
{prologue}{copy_h0}
{start_sync}{step_header}
        h_prev_ptr = h_state_ptr + (step % 2) * B * H
        h_next_ptr = h_state_ptr + ((step + 1) % 2) * B * H
{hidden_chunk}
            gate_ptrs = gates_ptr + rows[:, None] * (3 * H) + hidden[None, :]
            pre_r = tl.load(gate_ptrs, mask=tile_mask, other=0.0)
            pre_z = tl.load(gate_ptrs + H, mask=tile_mask, other=0.0)
            pre_n = tl.load(gate_ptrs + 2 * H, mask=tile_mask, other=0.0)
            hn = tl.zeros((BLOCK_B, BLOCK_H), dtype={CT})
{recurrent}
            if HAS_BIAS:
                b_hn = tl.load(b_hh_ptr + (2 * H + hidden) * stride_b_hh, mask=hidden_mask, other=0.0).to({CT})
                hn += b_hn[None, :]
            gate_r = _sigmoid(pre_r)
            gate_z = _sigmoid(pre_z)
            gate_n = _tanh(pre_n + gate_r * hn)
            h_old = tl.load(h_prev_ptr + seqs[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0)
            h = gate_n + gate_z * (h_old - gate_n)
            tl.store(gate_ptrs, gate_r, mask=tile_mask)
            tl.store(gate_ptrs + H, gate_z, mask=tile_mask)
            tl.store(gate_ptrs + 2 * H, gate_n, mask=tile_mask)
            tl.store(hn_ptr + rows[:, None] * H + hidden[None, :], hn, mask=tile_mask)
            tl.store(h_next_ptr + seqs[:, None] * H + hidden[None, :], tl.where(keep, h, h_old), mask=tile_mask)
            tl.store(y_ptr + rows[:, None] * H + hidden[None, :], _to_output(tl.where(keep, h, 0.0)), mask=tile_mask)
        # the step's state is complete before the next step reads it
{step_sync}        step += 1
{barrier_reset}{final_h}'''

_RNN_FORWARD = '''
@triton.jit
def rnn_layer_kernel(
    # inputs: h0 [B, H] (strides in elements), W_hh [H, H], lengths [B] (HAS_LENGTHS),
    # xproj [T, B, H] = x @ W_ih^T + b_ih + b_hh (may be y itself)
    h0_ptr, stride_h0_b, stride_h0_c,
    w_hh_ptr, stride_whh_g, stride_whh_k,
    lengths_ptr, stride_len,
    xproj_ptr,
    # outputs: y [T, B, H], h_n [B, H]
    y_ptr, h_n_ptr,
    # scratch: the hidden state, double-buffered [2, B, H]; a zeroed barrier counter per batch
    # block (H_PROGRAMS > 1)
    h_state_ptr, barrier_ptr,
    # sizes
    T, B,
    H: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    H_SLICE: tl.constexpr, H_PROGRAMS: tl.constexpr,
):
    """One Elman RNN layer in one direction: each program runs all T steps of BLOCK_B sequences,
    for H_SLICE of their hidden units."""
{prologue}{copy_h0}
{start_sync}{step_header}
        h_prev_ptr = h_state_ptr + (step % 2) * B * H
        h_next_ptr = h_state_ptr + ((step + 1) % 2) * B * H
{hidden_chunk}
            pre = tl.load(xproj_ptr + rows[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0).to({CT})
{recurrent}
            if RELU:
                h = tl.where(pre < 0, 0.0, pre)  # keeps NaN, as np.maximum
            else:
                h = _tanh(pre)
            h_old = tl.load(h_prev_ptr + seqs[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0)
            tl.store(h_next_ptr + seqs[:, None] * H + hidden[None, :], tl.where(keep, h, h_old), mask=tile_mask)
            tl.store(y_ptr + rows[:, None] * H + hidden[None, :], _to_output(tl.where(keep, h, 0.0)), mask=tile_mask)
        # the step's state is complete before the next step reads it
{step_sync}        step += 1
{barrier_reset}{final_h}'''


def _fill(template, pieces) -> str:
    """`template` with each `{name}` of `pieces` replaced by its source text."""
    for key, value in pieces.items():
        template = template.replace("{" + key + "}", value)
    return template


def _scan_source(template, compute, out_dtype, states, final_states, **pieces) -> str:
    """A scan template with its prologue, step header, state copies, epilogue and `pieces`
    filled in. states: (input, scratch, size, block) per state; final_states: (scratch, output,
    size, block). Made once per distinct text: a compiled call runs the same scans every time."""
    key = (template, str(compute), str(out_dtype), tuple(states.items()),
           tuple(final_states.items()), tuple(sorted(pieces.items())))
    if key not in _SCAN_SOURCES:
        _SCAN_SOURCES[key] = _filled_scan_source(template, compute, out_dtype, states, final_states, pieces)
    return _SCAN_SOURCES[key]


_SCAN_SOURCES: dict = {}


def _filled_scan_source(template, compute, out_dtype, states, final_states, pieces) -> str:
    pieces = dict(dict(prologue=_SCAN_PROLOGUE, step_header=_STEP_HEADER, hidden_chunk=_hidden_chunk(True),
                       start_sync=_grid_sync(4, "0"), step_sync=_grid_sync(8, "step + 1"),
                       barrier_reset=_BARRIER_RESET), **pieces)
    for name, (src, dst, size, block) in states.items():
        pieces[name] = _copy_state(src, dst, size, block)
    for name, (src, dst, size, block) in final_states.items():
        pieces[name] = _final_state(src, dst, size, block)
    return _source(_fill(template, pieces), compute, out_dtype)


def _sizes_and_types(call, x, state):
    """(T, B, H, output type, compute type) of a layer: x [T, B, I], `state` [B, H]."""
    T, B, _ = x.shape
    return T, B, state.shape[1], call.out_dtype, dtypes.compute_type(call.out_dtype)


def _layer_flags(call):
    """(reverse, has_bias, has_proj, has_lengths) of a layer op."""
    return tuple(bool(call.attrs.get(name, False)) for name in ("reverse", "has_bias", "has_proj", "has_lengths"))


def _lstm_forward(call, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, outputs):
    """y, h_n, c_n and the workspace of one LSTM layer direction: the input GEMM and the scan.
    outputs: the op's output index of y, h_n, c_n (None: not an output of the op)."""
    T, B, H, out_dtype, compute = _sizes_and_types(call, x, c0)
    P = h0.shape[1]
    workspace = call.empty((T * B * WORKSPACE_WIDTH["lstm"] * H,), compute)
    gates, cells = workspace[:T * B * 4 * H], workspace[T * B * 4 * H:]
    _sequence_matmul(call, "lstm_layer_input_projection_kernel", x, w_ih, True, gates, b_ih, b_hh, 4 * H)
    y, h_n, c_n = (_output(call, j, shape, out_dtype) for j, shape in zip(outputs, ((T, B, P), (B, P), (B, H))))
    h_state, c_state = call.empty((2, B, P), compute), call.empty((2, B, H), compute)
    r = call.empty((B, H), compute) if w_hr is not None else h_state
    # (a projection needs every hidden unit of a step before it: one program owns them all)
    blocks, grid, barrier, split = scan_split(call, B, H, can_split=w_hr is None)
    blocks["BLOCK_P"] = block_size(P, high=32)
    source = _scan_source(_LSTM_FORWARD, compute, out_dtype,
                          dict(copy_h0=("h0", "h_state", "P", "BLOCK_P"), copy_c0=("c0", "c_state", "H", "BLOCK_H")),
                          dict(final_h=("h_state", "h_n", "P", "BLOCK_P"), final_c=("c_state", "c_n", "H", "BLOCK_H")),
                          recurrent=_recurrent_matmul("P", [("pre_i", "w_i"), ("pre_f", "w_f"), ("pre_g", "w_g"),
                                                            ("pre_o", "w_o")]))
    kernel = call.kernel("lstm_layer_kernel", source)
    call.launch(kernel, grid,
                h0, *_strides(h0), c0, *_strides(c0), w_hh, *_strides(w_hh), *_operand(w_hr, h0, 2),
                *_operand(lengths, h0, 1), y, h_n, c_n, gates, cells, h_state, c_state, r, barrier, T, B, H=H, P=P,
                REVERSE=reverse, HAS_PROJ=w_hr is not None, HAS_LENGTHS=lengths is not None, **blocks, **split)
    return y, h_n, c_n, workspace


def _gru_forward(call, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, outputs):
    T, B, H, out_dtype, compute = _sizes_and_types(call, x, h0)
    workspace = call.empty((T * B * WORKSPACE_WIDTH["gru"] * H,), compute)
    gates, hn = workspace[:T * B * 3 * H], workspace[T * B * 3 * H:]
    # b_hr and b_hz join the input side; b_hn stays inside r * (W_hn h + b_hn)
    _sequence_matmul(call, "gru_layer_input_projection_kernel", x, w_ih, True, gates, b_ih, b_hh, 2 * H)
    y, h_n = (_output(call, j, shape, out_dtype) for j, shape in zip(outputs, ((T, B, H), (B, H))))
    h_state = call.empty((2, B, H), compute)
    blocks, grid, barrier, split = scan_split(call, B, H)
    source = _scan_source(_GRU_FORWARD, compute, out_dtype, dict(copy_h0=("h0", "h_state", "H", "BLOCK_H")),
                          dict(final_h=("h_state", "h_n", "H", "BLOCK_H")),
                          recurrent=_recurrent_matmul("H", [("pre_r", "w_r"), ("pre_z", "w_z"), ("hn", "w_n")]))
    kernel = call.kernel("gru_layer_kernel", source)
    call.launch(kernel, grid,
                h0, *_strides(h0), w_hh, *_strides(w_hh), *_operand(b_hh, h0, 1), *_operand(lengths, h0, 1),
                y, h_n, gates, hn, h_state, barrier, T, B, H=H,
                REVERSE=reverse, HAS_BIAS=b_hh is not None, HAS_LENGTHS=lengths is not None,
                **blocks, **split)
    return y, h_n, workspace


def _rnn_forward(call, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity, outputs):
    T, B, H, out_dtype, compute = _sizes_and_types(call, x, h0)
    workspace = call.empty((0,), compute)
    y, h_n = (_output(call, j, shape, out_dtype) for j, shape in zip(outputs, ((T, B, H), (B, H))))
    # the input projection goes into y when y has the compute type (the scan reads each element
    # before it writes it), else into scratch
    xproj = y if y.dtype == compute else call.empty((T, B, H), compute)
    _sequence_matmul(call, "rnn_layer_input_projection_kernel", x, w_ih, True, xproj, b_ih, b_hh, H)
    h_state = call.empty((2, B, H), compute)
    blocks, grid, barrier, split = scan_split(call, B, H)
    source = _scan_source(_RNN_FORWARD, compute, out_dtype, dict(copy_h0=("h0", "h_state", "H", "BLOCK_H")),
                          dict(final_h=("h_state", "h_n", "H", "BLOCK_H")), recurrent=_recurrent_matmul("H", [("pre", "w")]))
    kernel = call.kernel("rnn_layer_kernel", source)
    call.launch(kernel, grid,
                h0, *_strides(h0), w_hh, *_strides(w_hh), *_operand(lengths, h0, 1), xproj, y, h_n, h_state, barrier,
                T, B, H=H, REVERSE=reverse, RELU=nonlinearity == "relu", HAS_LENGTHS=lengths is not None,
                **blocks, **split)
    return y, h_n, workspace


def _output(call, j, shape, dtype):
    """Output j of the op (placed where the graph wants it), or a new array for j None."""
    return call.empty(shape, dtype) if j is None else call.output(j, shape, dtype)


@emitter("lstm_layer")
def lstm_layer(call):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = call.inputs
    reverse, has_bias, has_proj, has_lengths = _layer_flags(call)
    return _lstm_forward(call, x, h0, c0, w_ih, w_hh, b_ih if has_bias else None, b_hh if has_bias else None,
                         w_hr if has_proj else None, lengths if has_lengths else None, reverse, (0, 1, 2))


@emitter("gru_layer")
def gru_layer(call):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths = call.inputs
    reverse, has_bias, _, has_lengths = _layer_flags(call)
    return _gru_forward(call, x, h0, w_ih, w_hh, b_ih if has_bias else None, b_hh if has_bias else None,
                        lengths if has_lengths else None, reverse, (0, 1))


@emitter("rnn_layer")
def rnn_layer(call):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths = call.inputs
    reverse, has_bias, _, has_lengths = _layer_flags(call)
    return _rnn_forward(call, x, h0, w_ih, w_hh, b_ih if has_bias else None, b_hh if has_bias else None,
                        lengths if has_lengths else None, reverse, call.attrs["nonlinearity"], (0, 1))


# --- cells: one step of the layer -------------------------------------------------------------------

@emitter("lstm_cell")
def lstm_cell(call):
    x, h, c, w_ih, w_hh, b_ih, b_hh = call.inputs
    bias = call.attrs["has_bias"]
    _, h1, c1, _ = _lstm_forward(call, x[None], h, c, w_ih, w_hh, b_ih if bias else None, b_hh if bias else None,
                                 None, None, False, (None, 0, 1))
    return h1, c1


@emitter("gru_cell")
def gru_cell(call):
    x, h, w_ih, w_hh, b_ih, b_hh = call.inputs
    bias = call.attrs["has_bias"]
    return _gru_forward(call, x[None], h, w_ih, w_hh, b_ih if bias else None, b_hh if bias else None, None, False,
                        (None, 0))[1]


@emitter("rnn_cell")
def rnn_cell(call):
    x, h, w_ih, w_hh, b_ih, b_hh = call.inputs
    bias = call.attrs["has_bias"]
    return _rnn_forward(call, x[None], h, w_ih, w_hh, b_ih if bias else None, b_hh if bias else None, None, False,
                        call.attrs["nonlinearity"], (None, 0))[1]


# --- backward scans -----------------------------------------------------------------------------------

_BACKWARD_STEP_HEADER = '''
    step = 0
    while step < T:
        # the steps in the reverse of the forward's order; prev: the step before t in that order
        if REVERSE:
            t = step
            prev = t + 1
        else:
            t = T - 1 - step
            prev = t - 1
        if HAS_LENGTHS:
            active = seq_mask & (t < length)
        else:
            active = seq_mask
        keep = active[:, None]
        rows = (t * B + seqs).to(tl.int64)  # this step's rows of the [T, B, ...] arrays
        prev_rows = (prev * B + seqs).to(tl.int64)
        has_prev = (prev_rows >= 0) & (prev_rows < T * B)  # t is not the first step of the pass
'''

# The incoming gradient of the hidden state at columns `{cols}`: dh carried from the step after,
# plus dy[t] where the step ran (y is constant zero on masked steps).
_INCOMING = '''
{ind}dh = tl.load(dh_read_ptr + seqs[:, None] * {size} + {cols}[None, :], mask=tile_mask, other=0.0)
{ind}dy = tl.load(dy_ptr + t.to(tl.int64) * stride_dy_t + seqs[:, None] * stride_dy_b + {cols}[None, :] * stride_dy_c,
{ind}             mask=keep & tile_mask, other=0.0).to({{CT}})
{ind}dht = dh + dy
'''


def _incoming(cols, size, indent):
    return _INCOMING.format(ind=" " * indent, cols=cols, size=size)


_DH_PREV = '''
        # dh for the step before: dgates[t] @ W_hh ({gates} gate rows, one reduction), or dh itself
        # where step t was masked
        for p0 in range(0, {size}, {block}):
            cols = p0 + tl.arange(0, {block})
            col_mask = cols < {size}
            tile_mask = seq_mask[:, None] & col_mask[None, :]
            dh_prev = tl.zeros((BLOCK_B, {block}), dtype={{CT}})
            for k0 in range(0, {gates} * H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_mask = ks < {gates} * H
                dg = tl.load({dgates}_ptr + rows[:, None] * ({gates} * H) + ks[None, :],
                             mask=seq_mask[:, None] & k_mask[None, :], other=0.0)
                w = tl.load(w_hh_ptr + ks[:, None] * stride_whh_g + cols[None, :] * stride_whh_k,
                            mask=k_mask[:, None] & col_mask[None, :], other=0.0).to({{CT}})
                dh_prev += tl.dot(dg, w, input_precision="ieee")
            dh = tl.load(dh_read_ptr + seqs[:, None] * {size} + cols[None, :], mask=tile_mask, other=0.0)
{direct}            tl.store(dh_write_ptr + seqs[:, None] * {size} + cols[None, :], tl.where(keep, dh_prev, dh),
                     mask=tile_mask)
        tl.debug_barrier()  # the step's gradients are complete before the next step reads them
        step += 1
'''


def _dh_prev(gates, dgates, size, block, direct=""):
    return _DH_PREV.format(gates=gates, dgates=dgates, size=size, block=block, direct=direct)


_LSTM_BACKWARD = '''
@triton.jit
def lstm_layer_backward_kernel(
    # incoming gradients (strides in elements): dy [T, B, P], dh_n [B, P], dc_n [B, H]
    dy_ptr, stride_dy_t, stride_dy_b, stride_dy_c,
    dh_n_ptr, stride_dh_n_b, stride_dh_n_c,
    dc_n_ptr, stride_dc_n_b, stride_dc_n_c,
    # the forward's: c0 [B, H], W_hh [4H, P], W_hr [P, H] (HAS_PROJ), lengths [B] (HAS_LENGTHS), and
    # the workspace: gate activations (i, f, o, g) [T, B, 4H], cell states [T, B, H]
    c0_ptr, stride_c0_b, stride_c0_c,
    w_hh_ptr, stride_whh_g, stride_whh_k,
    w_hr_ptr, stride_whr_p, stride_whr_h,
    lengths_ptr, stride_len,
    gates_ptr, cells_ptr,
    # outputs: dgates [T, B, 4H], the gradients of the pre-activations (i, f, g, o), zero on masked
    # steps; with HAS_PROJ dht [T, B, P] (zero on masked steps) and r = o * tanh(c) [T, B, H] for
    # dW_hr; dh0 [B, P], dc0 [B, H]
    dgates_ptr, dht_ptr, r_ptr, dh0_ptr, dc0_ptr,
    # scratch: the state's gradients, double-buffered ([2, B, P], [2, B, H])
    dh_state_ptr, dc_state_ptr,
    # sizes
    T, B,
    H: tl.constexpr, P: tl.constexpr, REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backpropagation through time for one LSTM layer direction, BLOCK_B sequences per program."""
{prologue}{copy_dh}{copy_dc}
{start_sync}{step_header}
        dh_read_ptr = dh_state_ptr + (step % 2) * B * P
        dh_write_ptr = dh_state_ptr + ((step + 1) % 2) * B * P
        dc_read_ptr = dc_state_ptr + (step % 2) * B * H
        dc_write_ptr = dc_state_ptr + ((step + 1) % 2) * B * H
        if HAS_PROJ:
            # dht = dh + dy[t], kept for dW_hr; its projection back to H happens per chunk below
            for p0 in range(0, P, BLOCK_P):
                cols = p0 + tl.arange(0, BLOCK_P)
                tile_mask = seq_mask[:, None] & (cols < P)[None, :]
{incoming_p}
                tl.store(dht_ptr + rows[:, None] * P + cols[None, :], tl.where(keep, dht, 0.0), mask=tile_mask)
            tl.debug_barrier()
{hidden_chunk}
            # dr: the gradient of o * tanh(c)
            if HAS_PROJ:
                dr = tl.zeros((BLOCK_B, BLOCK_H), dtype={CT})
                for k0 in range(0, P, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_mask = ks < P
                    dht = tl.load(dht_ptr + rows[:, None] * P + ks[None, :], mask=seq_mask[:, None] & k_mask[None, :],
                                  other=0.0)
                    w_hr = tl.load(w_hr_ptr + ks[:, None] * stride_whr_p + hidden[None, :] * stride_whr_h,
                                   mask=k_mask[:, None] & hidden_mask[None, :], other=0.0).to({CT})
                    dr += tl.dot(dht, w_hr, input_precision="ieee")
            else:
{incoming_h}
                dr = dht
            gate_ptrs = gates_ptr + rows[:, None] * (4 * H) + hidden[None, :]
            gate_i = tl.load(gate_ptrs, mask=tile_mask, other=0.0)
            gate_f = tl.load(gate_ptrs + H, mask=tile_mask, other=0.0)
            gate_o = tl.load(gate_ptrs + 2 * H, mask=tile_mask, other=0.0)
            gate_g = tl.load(gate_ptrs + 3 * H, mask=tile_mask, other=0.0)
            c = tl.load(cells_ptr + rows[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0)
            # the cell state step t started from: the step before's, or c0
            c_before = tl.load(cells_ptr + prev_rows[:, None] * H + hidden[None, :], mask=tile_mask & has_prev[:, None],
                               other=0.0)
            c_first = tl.load(c0_ptr + seqs[:, None] * stride_c0_b + hidden[None, :] * stride_c0_c, mask=tile_mask,
                              other=0.0).to({CT})
            c_prev = tl.where(has_prev[:, None], c_before, c_first)
            tanh_c = _tanh(c)
            dc_in = tl.load(dc_read_ptr + seqs[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0)
            dc = dc_in + dr * gate_o * (1.0 - tanh_c * tanh_c)
            # the gates' pre-activation gradients: activation gradient times slope
            d_i = dc * gate_g * (gate_i - gate_i * gate_i)
            d_f = dc * c_prev * (gate_f - gate_f * gate_f)
            d_g = dc * gate_i * (1.0 - gate_g * gate_g)
            d_o = dr * tanh_c * (gate_o - gate_o * gate_o)
            dgate_ptrs = dgates_ptr + rows[:, None] * (4 * H) + hidden[None, :]
            tl.store(dgate_ptrs, tl.where(keep, d_i, 0.0), mask=tile_mask)
            tl.store(dgate_ptrs + H, tl.where(keep, d_f, 0.0), mask=tile_mask)
            tl.store(dgate_ptrs + 2 * H, tl.where(keep, d_g, 0.0), mask=tile_mask)
            tl.store(dgate_ptrs + 3 * H, tl.where(keep, d_o, 0.0), mask=tile_mask)
            tl.store(dc_write_ptr + seqs[:, None] * H + hidden[None, :], tl.where(keep, dc * gate_f, dc_in),
                     mask=tile_mask)
            if HAS_PROJ:
                tl.store(r_ptr + rows[:, None] * H + hidden[None, :], gate_o * tanh_c, mask=tile_mask)
        tl.debug_barrier()  # every gate gradient of step t is written before dh reads whole rows
{dh_prev}{final_dh}{final_dc}'''

_GRU_BACKWARD = '''
@triton.jit
def gru_layer_backward_kernel(
    # incoming gradients (strides in elements): dy [T, B, H], dh_n [B, H]
    dy_ptr, stride_dy_t, stride_dy_b, stride_dy_c,
    dh_n_ptr, stride_dh_n_b, stride_dh_n_c,
    # the forward's: h0 [B, H], W_hh [3H, H], lengths [B] (HAS_LENGTHS), y [T, B, H], and the
    # workspace: gate activations (r, z, n) [T, B, 3H], hn = W_hn h + b_hn [T, B, H]
    h0_ptr, stride_h0_b, stride_h0_c,
    w_hh_ptr, stride_whh_g, stride_whh_k,
    lengths_ptr, stride_len,
    y_ptr, stride_y_t, stride_y_b, stride_y_c,
    gates_ptr, hn_ptr,
    # outputs: the pre-activation gradients of the input side dg_in (r, z, n) and of the hidden
    # side dg_hid (r, z, r * dn) [T, B, 3H], zero on masked steps; dh0 [B, H]
    dg_in_ptr, dg_hid_ptr, dh0_ptr,
    # scratch: dh, double-buffered [2, B, H]
    dh_state_ptr,
    # sizes
    T, B,
    H: tl.constexpr, REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backpropagation through time for one GRU layer direction, BLOCK_B sequences per program."""
{prologue}{copy_dh}
{start_sync}{step_header}
        dh_read_ptr = dh_state_ptr + (step % 2) * B * H
        dh_write_ptr = dh_state_ptr + ((step + 1) % 2) * B * H
        # the hidden state step t started from: y at the step before where it ran, else h0
        prev_ran = seq_mask & has_prev
        if HAS_LENGTHS:
            prev_ran = prev_ran & (prev < length)
{hidden_chunk}
{incoming_h}
            gate_ptrs = gates_ptr + rows[:, None] * (3 * H) + hidden[None, :]
            gate_r = tl.load(gate_ptrs, mask=tile_mask, other=0.0)
            gate_z = tl.load(gate_ptrs + H, mask=tile_mask, other=0.0)
            gate_n = tl.load(gate_ptrs + 2 * H, mask=tile_mask, other=0.0)
            hn = tl.load(hn_ptr + rows[:, None] * H + hidden[None, :], mask=tile_mask, other=0.0)
            y_prev = tl.load(y_ptr + prev.to(tl.int64) * stride_y_t + seqs[:, None] * stride_y_b
                             + hidden[None, :] * stride_y_c, mask=prev_ran[:, None] & tile_mask, other=0.0)
            h0 = tl.load(h0_ptr + seqs[:, None] * stride_h0_b + hidden[None, :] * stride_h0_c, mask=tile_mask,
                         other=0.0)
            h_prev = tl.where(prev_ran[:, None], y_prev.to({CT}), h0.to({CT}))
            d_n = dht * (1.0 - gate_n * gate_n) * (1.0 - gate_z)
            d_r = d_n * hn * (gate_r - gate_r * gate_r)
            d_z = dht * (h_prev - gate_n) * (gate_z - gate_z * gate_z)
            d_r = tl.where(keep, d_r, 0.0)
            d_z = tl.where(keep, d_z, 0.0)
            d_n = tl.where(keep, d_n, 0.0)
            dg_in_ptrs = dg_in_ptr + rows[:, None] * (3 * H) + hidden[None, :]
            tl.store(dg_in_ptrs, d_r, mask=tile_mask)
            tl.store(dg_in_ptrs + H, d_z, mask=tile_mask)
            tl.store(dg_in_ptrs + 2 * H, d_n, mask=tile_mask)
            dg_hid_ptrs = dg_hid_ptr + rows[:, None] * (3 * H) + hidden[None, :]
            tl.store(dg_hid_ptrs, d_r, mask=tile_mask)
            tl.store(dg_hid_ptrs + H, d_z, mask=tile_mask)
            tl.store(dg_hid_ptrs + 2 * H, d_n * gate_r, mask=tile_mask)
        tl.debug_barrier()  # every gate gradient of step t is written before dh reads whole rows
{dh_prev}{final_dh}'''

# The GRU's h' = n + z * (h - n) also passes dh straight through: dh_prev += (dh + dy[t]) * z.
_GRU_DIRECT = '''\
            dy = tl.load(dy_ptr + t.to(tl.int64) * stride_dy_t + seqs[:, None] * stride_dy_b + cols[None, :] * stride_dy_c,
                         mask=keep & tile_mask, other=0.0).to({CT})
            gate_z = tl.load(gates_ptr + rows[:, None] * (3 * H) + H + cols[None, :], mask=tile_mask, other=0.0)
            dh_prev += (dh + dy) * gate_z
'''

_RNN_BACKWARD = '''
@triton.jit
def rnn_layer_backward_kernel(
    # incoming gradients (strides in elements): dy [T, B, H], dh_n [B, H]
    dy_ptr, stride_dy_t, stride_dy_b, stride_dy_c,
    dh_n_ptr, stride_dh_n_b, stride_dh_n_c,
    # the forward's: W_hh [H, H], lengths [B] (HAS_LENGTHS), y [T, B, H]
    w_hh_ptr, stride_whh_g, stride_whh_k,
    lengths_ptr, stride_len,
    y_ptr, stride_y_t, stride_y_b, stride_y_c,
    # outputs: dz [T, B, H], the pre-activation gradients (zero on masked steps); dh0 [B, H]
    dz_ptr, dh0_ptr,
    # scratch: dh, double-buffered [2, B, H]
    dh_state_ptr,
    # sizes
    T, B,
    H: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backpropagation through time for one Elman RNN layer direction, BLOCK_B sequences per program."""
{prologue}{copy_dh}
{start_sync}{step_header}
        dh_read_ptr = dh_state_ptr + (step % 2) * B * H
        dh_write_ptr = dh_state_ptr + ((step + 1) % 2) * B * H
{hidden_chunk}
{incoming_h}
            h = tl.load(y_ptr + t.to(tl.int64) * stride_y_t + seqs[:, None] * stride_y_b + hidden[None, :] * stride_y_c,
                        mask=tile_mask, other=0.0).to({CT})
            if RELU:
                slope = tl.where(h > 0, 1.0, 0.0)
            else:
                slope = 1.0 - h * h
            tl.store(dz_ptr + rows[:, None] * H + hidden[None, :], tl.where(keep, dht * slope, 0.0), mask=tile_mask)
        tl.debug_barrier()  # every gradient of step t is written before dh reads whole rows
{dh_prev}{final_dh}'''


def _backward_source(template, compute, out_dtype, states, final_states, **pieces) -> str:
    """A backward scan template filled in as `_scan_source` does, with the backward step header."""
    return _scan_source(template, compute, out_dtype, states, final_states, step_header=_BACKWARD_STEP_HEADER,
                        hidden_chunk=_hidden_chunk(False), start_sync="    tl.debug_barrier()\n", **pieces)


@emitter("lstm_layer_backward")
def lstm_layer_backward(call):
    dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, workspace = call.inputs
    reverse, has_bias, has_proj, has_lengths = _layer_flags(call)
    lengths = lengths if has_lengths else None
    w_hr = w_hr if has_proj else None
    T, B, H, out_dtype, compute = _sizes_and_types(call, x, c0)
    P = h0.shape[1]
    gates, cells = workspace[:T * B * 4 * H], workspace[T * B * 4 * H:]
    dgates = call.empty((T, B, 4 * H), compute)
    dht, r = (call.empty((T, B, P), compute), call.empty((T, B, H), compute)) if has_proj else (dgates, dgates)
    dh0, dc0 = call.empty((B, P), out_dtype), call.empty((B, H), out_dtype)
    dh_state, dc_state = call.empty((2, B, P), compute), call.empty((2, B, H), compute)
    blocks = scan_blocks(B, H, P)
    source = _backward_source(
        _LSTM_BACKWARD, compute, out_dtype,
        dict(copy_dh=("dh_n", "dh_state", "P", "BLOCK_P"), copy_dc=("dc_n", "dc_state", "H", "BLOCK_H")),
        dict(final_dh=("dh_state", "dh0", "P", "BLOCK_P"), final_dc=("dc_state", "dc0", "H", "BLOCK_H")),
        incoming_p=_incoming("cols", "P", 16), incoming_h=_incoming("hidden", "P", 16),
        dh_prev=_dh_prev(4, "dgates", "P", "BLOCK_P"))
    kernel = call.kernel("lstm_layer_backward_kernel", source)
    call.launch(kernel, (_cdiv(B, blocks["BLOCK_B"]),),
                dy, *_strides(dy), dh_n, *_strides(dh_n), dc_n, *_strides(dc_n), c0, *_strides(c0),
                w_hh, *_strides(w_hh), *_operand(w_hr, c0, 2), *_operand(lengths, c0, 1), gates, cells,
                dgates, dht, r, dh0, dc0, dh_state, dc_state, T, B, H=H, P=P,
                REVERSE=reverse, HAS_PROJ=has_proj, HAS_LENGTHS=lengths is not None, **blocks)
    dx, dw_ih, dw_hh, *db = _backward_gemms(call, "lstm_layer_backward", dgates, dgates, x, w_ih, y, h0, lengths,
                                            reverse, has_bias, out_dtype)
    grads = [dx, dh0, dc0, dw_ih, dw_hh] + db
    if has_proj:
        dw_hr = call.empty((P, H), out_dtype)
        _weight_grad(call, "lstm_layer_backward_dw_hr_kernel", dht, r, dw_hr)
        grads.append(dw_hr)
    return tuple(grads)


@emitter("gru_layer_backward")
def gru_layer_backward(call):
    dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace = call.inputs
    reverse, has_bias, _, has_lengths = _layer_flags(call)
    lengths = lengths if has_lengths else None
    T, B, H, out_dtype, compute = _sizes_and_types(call, x, h0)
    gates, hn = workspace[:T * B * 3 * H], workspace[T * B * 3 * H:]
    dg_in, dg_hid = call.empty((T, B, 3 * H), compute), call.empty((T, B, 3 * H), compute)
    dh0, dh_state = call.empty((B, H), out_dtype), call.empty((2, B, H), compute)
    blocks = scan_blocks(B, H)
    source = _backward_source(
        _GRU_BACKWARD, compute, out_dtype, dict(copy_dh=("dh_n", "dh_state", "H", "BLOCK_H")),
        dict(final_dh=("dh_state", "dh0", "H", "BLOCK_H")),
        incoming_h=_incoming("hidden", "H", 12), dh_prev=_dh_prev(3, "dg_hid", "H", "BLOCK_H", _GRU_DIRECT))
    kernel = call.kernel("gru_layer_backward_kernel", source)
    call.launch(kernel, (_cdiv(B, blocks["BLOCK_B"]),),
                dy, *_strides(dy), dh_n, *_strides(dh_n), h0, *_strides(h0), w_hh, *_strides(w_hh),
                *_operand(lengths, h0, 1), y, *_strides(y), gates, hn, dg_in, dg_hid, dh0, dh_state, T, B, H=H,
                REVERSE=reverse, HAS_LENGTHS=lengths is not None, **blocks)
    dx, dw_ih, dw_hh, *db = _backward_gemms(call, "gru_layer_backward", dg_in, dg_hid, x, w_ih, y, h0, lengths,
                                            reverse, has_bias, out_dtype)
    return (dx, dh0, dw_ih, dw_hh, *db)


@emitter("rnn_layer_backward")
def rnn_layer_backward(call):
    dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace = call.inputs
    reverse, has_bias, _, has_lengths = _layer_flags(call)
    lengths = lengths if has_lengths else None
    T, B, H, out_dtype, compute = _sizes_and_types(call, x, h0)
    dz = call.empty((T, B, H), compute)
    dh0, dh_state = call.empty((B, H), out_dtype), call.empty((2, B, H), compute)
    blocks = scan_blocks(B, H)
    source = _backward_source(
        _RNN_BACKWARD, compute, out_dtype, dict(copy_dh=("dh_n", "dh_state", "H", "BLOCK_H")),
        dict(final_dh=("dh_state", "dh0", "H", "BLOCK_H")),
        incoming_h=_incoming("hidden", "H", 12), dh_prev=_dh_prev(1, "dz", "H", "BLOCK_H"))
    kernel = call.kernel("rnn_layer_backward_kernel", source)
    call.launch(kernel, (_cdiv(B, blocks["BLOCK_B"]),),
                dy, *_strides(dy), dh_n, *_strides(dh_n), w_hh, *_strides(w_hh), *_operand(lengths, h0, 1),
                y, *_strides(y), dz, dh0, dh_state, T, B, H=H,
                REVERSE=reverse, RELU=call.attrs["nonlinearity"] == "relu", HAS_LENGTHS=lengths is not None,
                **blocks)
    dx, dw_ih, dw_hh, *db = _backward_gemms(call, "rnn_layer_backward", dz, dz, x, w_ih, y, h0, lengths,
                                            reverse, has_bias, out_dtype)
    return (dx, dh0, dw_ih, dw_hh, *db)
