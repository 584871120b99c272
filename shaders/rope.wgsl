// Rotary position embedding, HF Llama "rotate half" convention, in place on a strided view
// of x: row r = b·tokens + t holds n_heads heads of head_dim at columns col_offset.., and the
// pair (d, d + head_dim/2) of every head rotates by the angle pos·inv_freq[d] with
// pos = pos0 + t:   x1' = (x1·cos − x2·sin)·scale,   x2' = (x2·cos + x1·sin)·scale.
// inv_freq holds one table, or LongRoPE's two (short, then long): the long one when the
// sequence, pos0 + tokens, is longer than long_after. scale is LongRoPE's attention factor.
// KV (define): x is a fused [q; k; v] row; heads from kv_head0 on are k heads, written
// rotated to k_cache row pos, and their v pair is copied to v_cache row pos (one dispatch
// for what would be two ropes and two copies).
// One thread per pair. Napkin math: 16 B and ~60 FLOPs per pair; bandwidth bound.
//
// Precision: the naive f32 angle pos·inv rounds by up to 2⁻²⁴·pos rad (1e-4 at pos 4000),
// which would dominate the error, so the angle is formed exactly and reduced mod 2π before
// cos/sin: inv splits into four parts of 6 significant bits (pos·part is exact for
// pos < 2¹⁸), each exact product is reduced by a three-part 2π (Cody–Waite), and the four
// remainders are summed. The reduced angle is within ~1e-6 rad of the exact pos·inv for
// pos < 2¹⁸; beyond it the products start to round. cos/sin then see |angle| ≤ π, where
// drivers are accurate to ~1e-6 or better (Vulkan itself only promises 2⁻¹¹ absolute).

struct Params {
    pairs: u32,       // rows · n_heads · head_dim/2 threads
    tokens: u32,      // rows per sequence: position = pos0 + row % tokens
    n_heads: u32,
    half_dim: u32,    // head_dim / 2
    col_offset: u32,
    row_stride: u32,
    pos_slot: u32,    // run slot of pos0, or NO_SLOT
    pos0: u32,
    long_after: u32,  // sequence length past which inv_freq's second table is used
    scale: f32,
    kv_head0: u32,    // KV: first k head (n_heads when none)
    kv_dim: u32,      // KV: cache row width (kv heads · head_dim)
    v_col: u32,       // KV: column of v in the row
}

const INV_2PI: f32 = 0.15915494;
// 2π = P1 + P2 + P3, P1 and P2 with ≤ 8 significant bits so k·P1 and k·P2 are exact for k < 2¹⁶.
const P1: f32 = 6.28125;
const P2: f32 = 0.00193023681640625;
const P3: f32 = 5.0703634e-6;

// x − 2πk for the k nearest x / 2π, for x exact in f32.
fn reduce(x: f32) -> f32 {
    let k = round(x * INV_2PI);
    return ((x - k * P1) - k * P2) - k * P3;
}

// pos·inv mod 2π in [−π, π], see the header.
fn angle(pos: f32, inv: f32) -> f32 {
    var rest = inv;
    var a = 0.0;
    for (var i = 0u; i < 4u; i++) {
        // Keep sign, exponent and the top 6 significant bits (5 stored mantissa bits).
        let part = bitcast<f32>(bitcast<u32>(rest) & 0xfffc0000u);
        a += reduce(pos * part);
        rest -= part; // exact: the bits below the cut
    }
    return reduce(a);
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.pairs) { return; }
    let d = i % p.half_dim;
    let head = (i / p.half_dim) % p.n_heads;
    let row = i / (p.half_dim * p.n_heads);
    let pos0 = run_value(p.pos_slot, p.pos0);
    let pos = pos0 + row % p.tokens;
    let table = select(0u, p.half_dim, pos0 + p.tokens > p.long_after);
    let a = angle(f32(pos), ld_inv_freq(table + d));
    let c = cos(a) * p.scale;
    let s = sin(a) * p.scale;
    let j = row * p.row_stride + p.col_offset + head * 2u * p.half_dim + d;
    let x1 = ld_x(j);
    let x2 = ld_x(j + p.half_dim);
#if KV
    if (head >= p.kv_head0) {
        let dst = pos * p.kv_dim + (head - p.kv_head0) * 2u * p.half_dim + d;
        st_k_cache(dst, x1 * c - x2 * s);
        st_k_cache(dst + p.half_dim, x2 * c + x1 * s);
        let v = row * p.row_stride + p.v_col + (head - p.kv_head0) * 2u * p.half_dim + d;
        st_v_cache(dst, ld_x(v));
        st_v_cache(dst + p.half_dim, ld_x(v + p.half_dim));
        return;
    }
#endif
    st_x(j, x1 * c - x2 * s);
    st_x(j + p.half_dim, x2 * c + x1 * s);
}
