// Linear layers: out[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]), i.e. x·Wᵀ + b with PyTorch's
// [out, in] weight layout. x, out f32; w f32, f16, q8 or q4 (dequantized on load); f32
// accumulation.
//
// Two kernels:
// * `matmul` (many rows of x): register blocking, each invocation owns an 8×8 output tile
//   and walks k four at a time, no workgroup memory. On lavapipe this beats shared-memory
//   tiling 2–4× because barriers are expensive there (docs/perf.md). FLOPs 2·M·N·K; traffic
//   ≈ 4·M·K·N/8 + |W|·M/8 bytes through the caches.
// * `matvec*` (1 ≤ M ≤ 8 rows, decode): bandwidth-bound, each weight read once for all M rows.
//   TPR threads share one weight row, each walks 32-element blocks (a whole q8/q4 block with
//   its scale), partial sums meet in workgroup memory after one barrier. Bytes: |W| + M·K·4.
//
// Defines: BIAS adds the bias; RESID adds r[m, n] (a residual, saving a separate add);
// Q8/Q4 make `matvec` decode the packed blocks directly; RMS makes `matvec` read x through an
// RMSNorm, x / sqrt(mean(x²) + eps) · g (a decoder layer's norm and the projection after it),
// which saves the norm's own dispatch. The gain multiplies x as it is loaded rather than being
// folded into w: folded before quantizing it would change q8/q4's rounding error.

struct Params {
    m: u32,   // rows of x / out
    n: u32,   // rows of w = columns of out
    k: u32,   // shared dimension
    eps: f32, // RMS only
}

#if BIAS
fn bias(n: u32) -> f32 { return ld_b(n); }
#else
fn bias(n: u32) -> f32 { return 0.0; }
#endif

#if RESID
fn resid(i: u32) -> f32 { return ld_r(i); }
#else
fn resid(i: u32) -> f32 { return 0.0; }
#endif

#if matmul
// Workgroup: WGX × WGY invocations, each computing an 8×8 output tile as four 4×4 blocks.
// A 4×4 block of dot products over four k is one matrix product, transpose(X)·W, with the
// x rows and w rows as matrix columns — written with mat4x4 values rather than indexed
// arrays so the tile stays in registers on every compiler (lavapipe spills indexed arrays).
// Four consecutive values from rows base..base+3 (clamped: edge tiles read valid memory).
fn x_rows4(base: u32, k: u32) -> mat4x4<f32> {
    let l = p.m - 1u;
    return mat4x4<f32>(ld4_x(min(base, l) * p.k + k), ld4_x(min(base + 1u, l) * p.k + k),
                       ld4_x(min(base + 2u, l) * p.k + k), ld4_x(min(base + 3u, l) * p.k + k));
}

fn w_rows4(base: u32, k: u32) -> mat4x4<f32> {
    let l = p.n - 1u;
    return mat4x4<f32>(ld4_w(min(base, l) * p.k + k), ld4_w(min(base + 1u, l) * p.k + k),
                       ld4_w(min(base + 2u, l) * p.k + k), ld4_w(min(base + 3u, l) * p.k + k));
}

// Column j holds x·w[j], matching transpose(X)·W's layout (column = w row, row = x row).
fn outer(x: vec4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(x * w.x, x * w.y, x * w.z, x * w.w);
}

fn store4(acc: mat4x4<f32>, m0: u32, n0: u32) {
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if (n >= p.n) { return; }
        let b = bias(n);
        for (var i = 0u; i < 4u; i++) {
            let o = (m0 + i) * p.n + n;
            if (m0 + i < p.m) { st_out(o, acc[j][i] + b + resid(o)); }
        }
    }
}

// One-dimensional workgroup (subgroup builtins need one): invocation i is (i % WGX, i / WGX).
@compute @workgroup_size(WGX * WGY)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
#if XSHARE
          @builtin(subgroup_invocation_id) lane: u32,
#endif
          ) {
    let m0 = (wg.y * WGY + li / WGX) * 8u;
    let n0 = (wg.x * WGX + li % WGX) * 8u;
#if XSHARE
    // A lane past the edge keeps going while others of its subgroup work (reads clamped,
    // stores checked), so all eight take part in the broadcasts.
    if (subgroupAll(m0 >= p.m || n0 >= p.n)) { return; }
#else
    if (m0 >= p.m || n0 >= p.n) { return; }
#endif
    let lm = p.m - 1u;
    let ln = p.n - 1u;
    var a00 = mat4x4<f32>(); var a01 = mat4x4<f32>(); var a10 = mat4x4<f32>(); var a11 = mat4x4<f32>();
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
#if XSHARE
        // The subgroup's 8 lanes (consecutive x-invocations) share m0: lane i loads row
        // m0 + i and the lanes broadcast, one vec4 load per lane instead of eight.
        let v = ld4_x(min(m0 + lane, lm) * p.k + k);
        let x0 = mat4x4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
        let x1 = mat4x4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
#else
        let x0 = x_rows4(m0, k);
        let x1 = x_rows4(m0 + 4u, k);
#endif
        let w0 = w_rows4(n0, k);
        let w1 = w_rows4(n0 + 4u, k);
        a00 += transpose(x0) * w0; a01 += transpose(x0) * w1;
        a10 += transpose(x1) * w0; a11 += transpose(x1) * w1;
    }
    // Rows whose length is not a multiple of four: the last few k one at a time.
    for (var k = k4; k < p.k; k++) {
        var xv: vec4<f32>; var xw: vec4<f32>; var wv: vec4<f32>; var ww: vec4<f32>;
        for (var i = 0u; i < 4u; i++) {
            xv[i] = ld_x(min(m0 + i, lm) * p.k + k); xw[i] = ld_x(min(m0 + 4u + i, lm) * p.k + k);
            wv[i] = ld_w(min(n0 + i, ln) * p.k + k); ww[i] = ld_w(min(n0 + 4u + i, ln) * p.k + k);
        }
        a00 += outer(xv, wv); a01 += outer(xv, ww);
        a10 += outer(xw, wv); a11 += outer(xw, ww);
    }
    store4(a00, m0, n0); store4(a01, m0, n0 + 4u);
    store4(a10, m0 + 4u, n0); store4(a11, m0 + 4u, n0 + 4u);
}
#endif

#if matvec
// MR rows of x. An invocation owns RPT weight rows, RPW apart so neighbouring invocations
// (SIMD lanes on CPU drivers) differ in row and share the same x loads; TPR invocations
// split one row's blocks between them. A workgroup of RPW·TPR invocations covers RPW·RPT rows.
var<workgroup> partial: array<f32, MR * RPT * RPW * TPR>;

#if RMS
fn gain(c: u32) -> f32 { return ld_g(c); }
fn gain4(c: u32) -> vec4<f32> { return ld4_g(c); }
#else
fn gain(c: u32) -> f32 { return 1.0; }
fn gain4(c: u32) -> vec4<f32> { return vec4<f32>(1.0); }
#endif

#if XSHARE
// x octets shared by the lanes of a subgroup of exactly 8 (lavapipe's SIMD width; the lanes
// own different rows at the same columns, so TPR = 1): lane i loads element i and the lanes
// broadcast.
// On CPU drivers every lane's load of a storage buffer is a scalar load, so this is one load
// per lane instead of eight (docs/perf.md).
// Octet at column c of x row r.
fn x_octet(r: u32, c: u32, lane: u32) -> mat2x4<f32> {
    let v = ld_x(r * p.k + c + lane) * gain(c + lane);
    return mat2x4<f32>(
        vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u)),
        vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u)));
}
#else
fn x_octet(r: u32, c: u32, lane: u32) -> mat2x4<f32> {
    let i = r * p.k + c;
    return mat2x4<f32>(ld4_x(i) * gain4(c), ld4_x(i + 4u) * gain4(c + 4u));
}
#endif

#if Q8 Q4
// One row's quantized block at column c: its code words (q4: 4, q8: 8) and scale, loaded
// once for all MR rows of x — with vec4 loads where the rows are whole vec4s of words.
struct Block {
    lo: vec4<u32>,
    hi: vec4<u32>,
    scale: f32,
}

fn load_block(n: u32, c: u32) -> Block {
    var b: Block;
#if Q4
    b.lo = ldw4_w(n * W_RW + c / 8u);
#else
    b.lo = ldw4_w(n * W_RW + c / 4u);
    b.hi = ldw4_w(n * W_RW + c / 4u + 4u);
#endif
    b.scale = unpack2x16float(ldw_w(n * W_RW + W_QW + c / 64u))[(c / 32u) & 1u];
    return b;
}

// Raw-code dot product of the block's octet o (columns c + 8·o .. +8) with x values lo, hi;
// `block_finish` applies the scale. A q4 word holds e0..e7 as nibbles: masking keeps the even
// ones in the bytes (e0 e2 e4 e6), shifting first the odd ones; swizzles match x for free.
// Nibbles widen through unpack4xI8 (values 0..15 either way): signed int→float is one
// instruction on x86, unsigned a sequence.
fn octet_dot(b: Block, o: u32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
#if Q4
    let word = b.lo[o];
    let even = vec4<f32>(unpack4xI8(word & 0x0F0F0F0Fu));
    let odd = vec4<f32>(unpack4xI8((word >> 4u) & 0x0F0F0F0Fu));
    return dot(even, vec4<f32>(lo.xz, hi.xz)) + dot(odd, vec4<f32>(lo.yw, hi.yw));
#else
    let words = select(b.hi, b.lo, o < 2u);
    let k = (2u * o) & 3u;
    return dot(vec4<f32>(unpack4xI8(words[k])), lo) + dot(vec4<f32>(unpack4xI8(words[k + 1u])), hi);
#endif
}

// The block's contribution from its raw dot product s: Σ(q−8)·d·x = d·(Σq·x − 8·Σx) for q4,
// d·Σq·x for q8.
fn block_finish(b: Block, s: f32, xsum: f32) -> f32 {
#if Q4
    return b.scale * (s - 8.0 * xsum);
#else
    return b.scale * s;
#endif
}
#else
// Float weights: the dot product of row n's octet o of the block at c with x values lo, hi.
// Eight at a time keeps x in few registers (32 would spill on 16-register CPUs).
fn octet_dot(n: u32, c: u32, o: u32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    let w = ld8_w(n * p.k + c + 8u * o);
    return dot(w[0], lo) + dot(w[1], hi);
}
#endif

@compute @workgroup_size(RPW * TPR)
fn matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
#if XSHARE
          @builtin(subgroup_invocation_id) lane: u32,
#endif
          @builtin(local_invocation_index) lid: u32) {
#if XSHARE
#else
    let lane = 0u;
#endif
    let slot = lid / TPR;
    let t = lid % TPR;
    let row0 = (wg.x + wg.y * nwg.x) * RPW * RPT + slot;
    var rows: array<u32, RPT>;
    // Rows past the end are computed as duplicates of the last row and not stored.
    for (var j = 0u; j < RPT; j++) { rows[j] = min(row0 + j * RPW, p.n - 1u); }
#if RMS
    // Every workgroup computes the rms of each x row itself: K more reads per row, from the
    // cache and small next to its RPW·RPT weight rows. The scale is one number per row, so
    // it applies to the finished dot products (the gain, one per column, to x as loaded).
    let wgs = RPW * TPR;
    let k4 = p.k / 4u;
    for (var r = 0u; r < MR; r++) {
        var q = 0.0;
        for (var i = lid; i < k4; i += wgs) { let v = ld4_x(r * p.k + 4u * i); q += dot(v, v); }
        for (var c = 4u * k4 + lid; c < p.k; c += wgs) { let v = ld_x(r * p.k + c); q += v * v; }
        partial[r * wgs + lid] = q;
    }
    workgroupBarrier();
    var inv_rms: array<f32, MR>;
    for (var r = 0u; r < MR; r++) {
        var q = 0.0;
        for (var i = 0u; i < wgs; i++) { q += partial[r * wgs + i]; }
        inv_rms[r] = inverseSqrt(q / f32(p.k) + p.eps);
    }
    workgroupBarrier(); // `partial` is reused for the row sums below
#endif
    var acc: array<f32, MR * RPT>;
    let full = p.k / 32u;
    for (var b = t; b < full; b += TPR) {
        let c = b * 32u;
#if Q8 Q4
        var blocks: array<Block, RPT>;
        for (var j = 0u; j < RPT; j++) { blocks[j] = load_block(rows[j], c); }
#endif
        for (var r = 0u; r < MR; r++) {
            var s: array<f32, RPT>;
            var xsum = 0.0;
            for (var o = 0u; o < 4u; o++) {
                let xo = x_octet(r, c + 8u * o, lane);
                let lo = xo[0];
                let hi = xo[1];
                xsum += dot(lo + hi, vec4<f32>(1.0));
#if Q8 Q4
                for (var j = 0u; j < RPT; j++) { s[j] += octet_dot(blocks[j], o, lo, hi); }
#else
                for (var j = 0u; j < RPT; j++) { s[j] += octet_dot(rows[j], c, o, lo, hi); }
#endif
            }
            for (var j = 0u; j < RPT; j++) {
#if Q8 Q4
                acc[r * RPT + j] += block_finish(blocks[j], s[j], xsum);
#else
                acc[r * RPT + j] += s[j];
#endif
            }
        }
    }
    // Tail of a row that is not a multiple of 32 long (float weights only).
    for (var c = full * 32u + t; c < p.k; c += TPR) {
        for (var j = 0u; j < RPT; j++) {
            let wv = ld_w(rows[j] * p.k + c);
            for (var r = 0u; r < MR; r++) { acc[r * RPT + j] += ld_x(r * p.k + c) * gain(c) * wv; }
        }
    }
    for (var i = 0u; i < MR * RPT; i++) {
        partial[(i * RPW + slot) * TPR + t] = acc[i];
    }
    workgroupBarrier();
    if (t != 0u) { return; }
    for (var j = 0u; j < RPT; j++) {
        let n = row0 + j * RPW;
        if (n >= p.n) { break; }
        for (var r = 0u; r < MR; r++) {
            var s = 0.0;
            for (var i = 0u; i < TPR; i++) { s += partial[((r * RPT + j) * RPW + slot) * TPR + i]; }
#if RMS
            s *= inv_rms[r];
#endif
            st_out(r * p.n + n, s + bias(n) + resid(r * p.n + n));
        }
    }
}
#endif
