// DaViT channel-group attention over a fused f32 qkv [B, N, 3C] (columns [q | k | v], each
// G groups of CG channels): for every batch item b and group g,
//   A = softmax_j(N^-½ · Σ_n q[n, i]·k[n, j])          (CG × CG, row i over j)
//   out[b, n, g·CG + i] = Σ_j A[i, j]·v[n, g·CG + j]   (out [B, N, C])
// in three dispatches, f32 throughout:
// * gram:    the partial sums Σ_n q[n, i]·k[n, j] over segments of `seg` tokens, into
//            part [B·G·nseg, CG·CG]. A thread owns an 8×8 block (i, j) of one segment and
//            walks its tokens four at a time: 16 vec4 loads per 256 FMAs, as four mat4x4
//            products (the matmul kernel's register tile). TILES = (CG/8)² threads cover a
//            segment, a workgroup takes SPW segments side by side; no barriers.
// * softmax: wg (i, g, b), thread j: sums the nseg partials of (i, j), scales, one barrier,
//            then each thread takes the row's max and sum itself (CG ≤ 64 values) and
//            writes A [B·G, CG·CG].
// * apply:   out = V·Aᵀ per group, a matmul with K = CG: a thread owns 8 tokens × 8 outputs
//            i and walks j four at a time, again 16 vec4 loads per 256 FMAs.
// Neighbouring threads differ in channels and share token rows (broadcast plus contiguous
// reads on GPUs; the same rows in cache for CPU drivers' SIMD lanes).
// Columns run in fours; when CG % 4 ≠ 0 (VEC4 off) the reads past a group's CG columns are
// masked to 0, so any CG ≤ 64 works; 8-wide tiles past CG read zeros and store nothing.
// Napkin math, large model stage 0 (N = 36864, C = 256, CG = 32): gram reads q, k (75 MB)
// for 2·N·C·CG = 0.60 GFLOP, apply reads v (37.7 MB) and writes out (37.7 MB) for another
// 0.60 GFLOP; partials 192 segments × 8 groups × 4 KB = 6.3 MB. ~1.2 GFLOP / 150 MB, about
// 8 FLOP/B: bandwidth bound on GPUs, FMA bound on CPU drivers.

struct Params {
    n: u32,       // tokens per batch item
    c: u32,       // channels C = G · CG
    groups: u32,  // G
    seg: u32,     // tokens per gram segment
    nseg: u32,    // segments per batch item
    scale: f32,   // N^-½
}

const LOWEST: f32 = -3.4028235e38;
// Some 8-wide tiles reach past CG (CG % 8 ≠ 0): those reads must be masked.
const EDGE: bool = CG % 8u != 0u;

#if gram apply
// Four consecutive channels c0.. of the group whose first qkv column is at `base`; columns
// from CG on read as 0 (the clamp keeps the masked reads in bounds).
fn qkv4(base: u32, c0: u32) -> vec4<f32> {
    if (VEC4 == 1u) {
        let v = ld4_qkv(base + min(c0, CG - 4u));
        if (EDGE) { return select(vec4<f32>(0.0), v, c0 < CG); }
        return v;
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        v[k] = select(0.0, ld_qkv(base + min(c0 + k, CG - 1u)), c0 + k < CG);
    }
    return v;
}

// Columns t < 4: qkv4 of token n + t of batch item b at group column `col`; zero for
// tokens from n_end on.
fn tokens4(b: u32, n: u32, n_end: u32, col: u32, c0: u32) -> mat4x4<f32> {
    var m: mat4x4<f32>;
    for (var t = 0u; t < 4u; t++) {
        let v = qkv4((b * p.n + min(n + t, n_end - 1u)) * 3u * p.c + col, c0);
        m[t] = select(vec4<f32>(0.0), v, n + t < n_end);
    }
    return m;
}

// Stores the 4×4 block `acc` (acc[c][r] is row r, column c) at base + r·stride + c, for
// r < rows and c < cols.
fn store_block(acc: mat4x4<f32>, base: u32, stride: u32, rows: u32, cols: u32) {
    let t = transpose(acc);
    for (var r = 0u; r < min(rows, 4u); r++) {
        if (VEC4 == 1u && cols >= 4u) {
            st4_dst(base + r * stride, t[r]);
        } else {
            for (var c = 0u; c < min(cols, 4u); c++) { st_dst(base + r * stride + c, t[r][c]); }
        }
    }
}

// a − b, or 0 when b ≥ a: how many of a block's rows or columns starting at b are valid.
fn left(a: u32, b: u32) -> u32 {
    return select(0u, a - b, a > b);
}
#endif

#if gram
fn st_dst(i: u32, v: f32) { st_part(i, v); }
fn st4_dst(i: u32, v: vec4<f32>) { st4_part(i, v); }

@compute @workgroup_size(TILES * SPW)
fn gram(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wg.x * SPW + lid / TILES;
    if (s >= p.nseg) { return; }
    let g = wg.y;
    let b = wg.z;
    let tile = lid % TILES;
    let i0 = (tile / TG) * 8u;
    let j0 = (tile % TG) * 8u;
    let n1 = min((s + 1u) * p.seg, p.n);
    let q_col = g * CG;
    let k_col = p.c + g * CG;
    // a_IJ[c][r] = Σ q[n, i0 + 4I + r]·k[n, j0 + 4J + c]
    var a00 = mat4x4<f32>(); var a01 = mat4x4<f32>(); var a10 = mat4x4<f32>(); var a11 = mat4x4<f32>();
    for (var n = s * p.seg; n < n1; n += 4u) {
        let q0 = tokens4(b, n, n1, q_col, i0);
        let q1 = tokens4(b, n, n1, q_col, i0 + 4u);
        let k0 = transpose(tokens4(b, n, n1, k_col, j0));
        let k1 = transpose(tokens4(b, n, n1, k_col, j0 + 4u));
        a00 += q0 * k0; a01 += q0 * k1;
        a10 += q1 * k0; a11 += q1 * k1;
    }
    let base = ((b * p.groups + g) * p.nseg + s) * CG * CG;
    store_block(a00, base + i0 * CG + j0, CG, left(CG, i0), left(CG, j0));
    store_block(a01, base + i0 * CG + j0 + 4u, CG, left(CG, i0), left(CG, j0 + 4u));
    store_block(a10, base + (i0 + 4u) * CG + j0, CG, left(CG, i0 + 4u), left(CG, j0));
    store_block(a11, base + (i0 + 4u) * CG + j0 + 4u, CG, left(CG, i0 + 4u), left(CG, j0 + 4u));
}
#endif

#if softmax
var<workgroup> row_sh: array<f32, CG>;

@compute @workgroup_size(CG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) j: u32) {
    let i = wg.x;
    let bg = wg.z * p.groups + wg.y;
    var s = 0.0;
    for (var seg = 0u; seg < p.nseg; seg++) {
        s += ld_part(((bg * p.nseg + seg) * CG + i) * CG + j);
    }
    s *= p.scale;
    row_sh[j] = s;
    workgroupBarrier();
    var m = LOWEST;
    for (var k = 0u; k < CG; k++) { m = max(m, row_sh[k]); }
    var sum = 0.0;
    for (var k = 0u; k < CG; k++) { sum += exp(row_sh[k] - m); }
    st_attn((bg * CG + i) * CG + j, exp(s - m) / sum);
}
#endif

#if apply
fn st_dst(i: u32, v: f32) { st_out(i, v); }
fn st4_dst(i: u32, v: vec4<f32>) { st4_out(i, v); }

// Columns r < 4: A[i + r, j..j+3] of the attention matrix at `base` (rows clamped to CG − 1,
// columns to CG − 1; v reads zeros there, and rows past CG are not stored).
fn attn4(base: u32, i: u32, j: u32) -> mat4x4<f32> {
    var m: mat4x4<f32>;
    for (var r = 0u; r < 4u; r++) {
        let row = base + min(i + r, CG - 1u) * CG;
        if (VEC4 == 1u) {
            m[r] = ld4_attn(row + j);
        } else {
            for (var k = 0u; k < 4u; k++) { m[r][k] = ld_attn(row + min(j + k, CG - 1u)); }
        }
    }
    return m;
}

@compute @workgroup_size(TG * TT)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wg.y;
    let b = wg.z;
    let i0 = (lid % TG) * 8u;
    let n0 = (wg.x * TT + lid / TG) * 8u;
    let v_col = 2u * p.c + g * CG;
    let a_base = (b * p.groups + g) * CG * CG;
    // a_TI[c][r] = out[n0 + 4T + r, i0 + 4I + c] (T: token half, I: channel half)
    var a00 = mat4x4<f32>(); var a01 = mat4x4<f32>(); var a10 = mat4x4<f32>(); var a11 = mat4x4<f32>();
    for (var j = 0u; j < CG; j += 4u) {
        let x0 = transpose(tokens4(b, n0, p.n, v_col, j));
        let x1 = transpose(tokens4(b, n0 + 4u, p.n, v_col, j));
        let w0 = attn4(a_base, i0, j);
        let w1 = attn4(a_base, i0 + 4u, j);
        a00 += x0 * w0; a01 += x0 * w1;
        a10 += x1 * w0; a11 += x1 * w1;
    }
    let o = (b * p.n + n0) * p.c + g * CG + i0;
    let rows0 = left(p.n, n0);
    let rows1 = left(p.n, n0 + 4u);
    store_block(a00, o, p.c, rows0, left(CG, i0));
    store_block(a01, o + 4u, p.c, rows0, left(CG, i0 + 4u));
    store_block(a10, o + 4u * p.c, p.c, rows1, left(CG, i0));
    store_block(a11, o + 4u * p.c + 4u, p.c, rows1, left(CG, i0 + 4u));
}
#endif
