// DaViT channel-group attention over a fused f32 qkv [B, N, 3C] (columns [q | k | v], each
// G groups of CG channels): for every batch item b and group g,
//   A = softmax_j(N^-½ · Σ_n q[n, i]·k[n, j])          (CG × CG, row i over j)
//   out[b, n, g·CG + i] = Σ_j A[i, j]·v[n, g·CG + j]   (out [B, N, C])
// in three dispatches, f32 throughout:
// * gram:    wg (segment s, g, b) sums q_iᵀk_j over its `seg` tokens into the partials
//            [B·G·nseg, CG·CG]. Thread (ti, tj) of TJ × TJ holds a 4×4 block (16 registers,
//            four vec4 rows) and reads 4 q and 4 k values per token: 16 FMAs per 8 loads, all
//            threads streaming the same rows (cache hits after the first). No barriers.
// * softmax: wg (i, g, b), thread j: sums the nseg partials of (i, j), scales, one barrier,
//            then each thread takes the row's max and sum itself (CG ≤ 64 values) and writes
//            A transposed, attn [B·G, CG·CG] with element (j, i), so the apply kernel reads
//            four consecutive i as one vec4.
// * apply:   wg (token block, g, b); thread (tt, ti) computes outputs i0..i0+3 for R = 4
//            tokens: per 4 values of j it reads 4 vec4 of A and R vec4 of v for 64 FMAs.
// Lanes are laid out so neighbours share the token row and differ in channels (a broadcast
// plus a contiguous read), which suits both GPUs and CPU drivers' SIMD lanes.
// Columns run in fours; when CG % 4 ≠ 0 the reads past a group's CG columns are masked to 0
// (VEC4 off), so any CG ≤ 64 works.
// Napkin math, large model stage 0 (N = 36864, C = 256, CG = 32): gram reads q, k (75 MB)
// for 2·N·C·CG = 0.60 GFLOP, apply reads v (37.7 MB), writes out (37.7 MB) for another
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

#if gram apply
// Four consecutive channels c0.. of a group whose first column in qkv is `base`; columns
// past CG read as 0 (the clamp keeps the masked reads in bounds).
fn qkv4(base: u32, c0: u32) -> vec4<f32> {
    if (VEC4 == 1u) { return ld4_qkv(base + c0); }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        v[k] = select(0.0, ld_qkv(base + min(c0 + k, CG - 1u)), c0 + k < CG);
    }
    return v;
}
#endif

#if gram
// Stores 4 consecutive columns j0.. of one partial-sum row starting at `base`, up to CG.
fn st_part4(base: u32, j0: u32, v: vec4<f32>) {
    if (VEC4 == 1u) { st4_part(base + j0, v); return; }
    for (var k = 0u; k < 4u; k++) {
        if (j0 + k < CG) { st_part(base + j0 + k, v[k]); }
    }
}

@compute @workgroup_size(TJ * TJ)
fn gram(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wg.x;
    let g = wg.y;
    let b = wg.z;
    let i0 = (lid / TJ) * 4u;
    let j0 = (lid % TJ) * 4u;
    let n1 = min((s + 1u) * p.seg, p.n);
    let q_col = g * CG;
    let k_col = p.c + g * CG;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var n = s * p.seg; n < n1; n++) {
        let row = (b * p.n + n) * 3u * p.c;
        let q = qkv4(row + q_col, i0);
        let k = qkv4(row + k_col, j0);
        a0 += q.x * k;
        a1 += q.y * k;
        a2 += q.z * k;
        a3 += q.w * k;
    }
    let base = ((b * p.groups + g) * p.nseg + s) * CG * CG;
    let acc = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var r = 0u; r < 4u; r++) {
        if (i0 + r < CG) { st_part4(base + (i0 + r) * CG, j0, acc[r]); }
    }
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
    st_attn((bg * CG + j) * CG + i, exp(s - m) / sum);
}
#endif

#if apply
// A[i0.., j] for one j: four consecutive entries of row j of the transposed attn at `base`,
// zeros past CG (rows j ≥ CG included).
fn attn4(base: u32, j: u32, i0: u32) -> vec4<f32> {
    if (VEC4 == 1u) { return ld4_attn(base + j * CG + i0); }
    var v = vec4<f32>(0.0);
    if (j >= CG) { return v; }
    for (var k = 0u; k < 4u; k++) {
        v[k] = select(0.0, ld_attn(base + j * CG + min(i0 + k, CG - 1u)), i0 + k < CG);
    }
    return v;
}

// acc + A[i0.., j0..j0+3] · v[j0..j0+3]: the four A vectors are a0..a3.
fn fma4(acc: vec4<f32>, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
        v: vec4<f32>) -> vec4<f32> {
    return acc + a0 * v.x + a1 * v.y + a2 * v.z + a3 * v.w;
}

@compute @workgroup_size(TI * TT)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wg.y;
    let b = wg.z;
    let i0 = (lid % TI) * 4u;
    // Tokens n0 + r·TT for r < 4; rows past N are clamped for reading and not written.
    let n0 = wg.x * TT * 4u + lid / TI;
    let v_col = 2u * p.c + g * CG;
    let last = (b + 1u) * p.n - 1u;
    let row0 = min(b * p.n + n0, last) * 3u * p.c + v_col;
    let row1 = min(b * p.n + n0 + TT, last) * 3u * p.c + v_col;
    let row2 = min(b * p.n + n0 + 2u * TT, last) * 3u * p.c + v_col;
    let row3 = min(b * p.n + n0 + 3u * TT, last) * 3u * p.c + v_col;
    let a_base = (b * p.groups + g) * CG * CG;
    var o0 = vec4<f32>(0.0);
    var o1 = vec4<f32>(0.0);
    var o2 = vec4<f32>(0.0);
    var o3 = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < CG; j0 += 4u) {
        let a0 = attn4(a_base, j0, i0);
        let a1 = attn4(a_base, j0 + 1u, i0);
        let a2 = attn4(a_base, j0 + 2u, i0);
        let a3 = attn4(a_base, j0 + 3u, i0);
        o0 = fma4(o0, a0, a1, a2, a3, qkv4(row0, j0));
        o1 = fma4(o1, a0, a1, a2, a3, qkv4(row1, j0));
        o2 = fma4(o2, a0, a1, a2, a3, qkv4(row2, j0));
        o3 = fma4(o3, a0, a1, a2, a3, qkv4(row3, j0));
    }
    let out = array<vec4<f32>, 4>(o0, o1, o2, o3);
    for (var r = 0u; r < 4u; r++) {
        let n = n0 + r * TT;
        if (n >= p.n) { break; }
        let o = (b * p.n + n) * p.c + g * CG + i0;
        if (VEC4 == 1u) {
            st4_out(o, out[r]);
        } else {
            for (var k = 0u; k < 4u; k++) {
                if (i0 + k < CG) { st_out(o + k, out[r][k]); }
            }
        }
    }
}
#endif
