// Scaled dot-product attention, out = softmax(q·kᵀ·scale)·v, over strided views of f32
// q [B, Tq, Hq·D] and k, v [B, S_max, Hkv·D] (a fused qkv projection can be passed as three
// views of one tensor). Grouped-query: head h reads kv head h / (Hq / Hkv). Full or causal
// (query i sits at absolute position kv_len − Tq + i and sees keys ≤ that); kv_len ≤ S_max
// comes from a param or a run slot (a KV cache that grows during decode).
// Output out [B, Tq, Hq·D], contiguous f32.
//
// One workgroup of WG threads per (batch, query, head); the scaled query sits in workgroup
// memory. Keys stream in blocks of WG: each thread scores one key into a double-buffered
// score block, one barrier, then every thread reads the whole block to update the running
// max and sum (online softmax, f32) and accumulates its DPT = MAX_D / WG output dims.
// Double buffering is why one barrier per block suffices: a thread only overwrites a buffer
// after passing the next barrier, which every thread reaches only after reading it.
// Napkin math, per (query, head) and key: 2·D reads of k and v (8·D bytes, mostly cache hits
// across the Hq/Hkv heads of a group), 4·D FLOPs, and WG exps per block per thread.

struct Params {
    groups: u32,     // B · Tq · Hq workgroups
    tq: u32,
    hq: u32,
    hkv: u32,
    head_dim: u32,
    s_max: u32,
    len_slot: u32,   // run slot of kv_len, or NO_SLOT
    len_fixed: u32,
    causal: u32,
    window: u32,     // keys a query sees at most (sliding window), 0 for all
    scale: f32,
    q_off: u32,
    q_stride: u32,
    k_off: u32,
    k_stride: u32,
    v_off: u32,
    v_stride: u32,
}

const DPT: u32 = MAX_D / WG; // output dims per thread
const LOWEST: f32 = -3.4028235e38;

var<workgroup> q_sh: array<f32, MAX_D>;
var<workgroup> scores: array<f32, 2 * WG>;

// q · k for the key at flat index kb; VEC4 when D, offsets and strides are multiples of 4.
fn score(kb: u32) -> f32 {
    var s = 0.0;
    if (VEC4 == 1u) {
        for (var d = 0u; d < p.head_dim; d += 4u) {
            s += dot(ld4_k(kb + d), vec4<f32>(q_sh[d], q_sh[d + 1u], q_sh[d + 2u], q_sh[d + 3u]));
        }
    } else {
        for (var d = 0u; d < p.head_dim; d++) { s += ld_k(kb + d) * q_sh[d]; }
    }
    return s;
}

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let gid = wg.x + wg.y * nwg.x;
    if (gid >= p.groups) { return; } // uniform per workgroup
    let h = gid % p.hq;
    let row = gid / p.hq;            // b · Tq + i
    let i = row % p.tq;
    let b = row / p.tq;
    let kvh = h / (p.hq / p.hkv);

    let kv_len = min(run_value(p.len_slot, p.len_fixed), p.s_max);
    // Keys visible to query i: all, or those up to its absolute position kv_len − Tq + i.
    var n = i32(kv_len);
    if (p.causal == 1u) { n = min(n, i32(kv_len) - i32(p.tq) + i32(i) + 1); }
    let n_keys = u32(max(n, 0));
    // A sliding window hides the keys before the last `window` of them.
    let first = select(0u, n_keys - p.window, p.window > 0u && n_keys > p.window);

    let qb = row * p.q_stride + p.q_off + h * p.head_dim;
    for (var d = lid; d < p.head_dim; d += WG) { q_sh[d] = ld_q(qb + d) * p.scale; }
    workgroupBarrier();

    let kv_row0 = b * p.s_max;
    let k_col = p.k_off + kvh * p.head_dim;
    let v_col = p.v_off + kvh * p.head_dim;
    var m = LOWEST;
    var l = 0.0;
    var acc: array<f32, DPT>;
    for (var start = first; start < n_keys; start += WG) {
        let buf = ((start / WG) & 1u) * WG;
        let key = start + lid;
        if (key < n_keys) { scores[buf + lid] = score((kv_row0 + key) * p.k_stride + k_col); }
        workgroupBarrier();

        let cnt = min(WG, n_keys - start);
        var mb = m;
        for (var j = 0u; j < cnt; j++) { mb = max(mb, scores[buf + j]); }
        let corr = exp(m - mb);
        l *= corr;
        for (var r = 0u; r < DPT; r++) { acc[r] *= corr; }
        for (var j = 0u; j < cnt; j++) {
            let e = exp(scores[buf + j] - mb);
            l += e;
            let vb = (kv_row0 + start + j) * p.v_stride + v_col;
            for (var r = 0u; r < DPT; r++) {
                let d = lid + r * WG;
                if (d < p.head_dim) { acc[r] += e * ld_v(vb + d); }
            }
        }
        m = mb;
    }

    // No visible key (a causal query before the cache start): output zeros, not 0/0.
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let ob = row * p.hq * p.head_dim + h * p.head_dim;
    for (var r = 0u; r < DPT; r++) {
        let d = lid + r * WG;
        if (d < p.head_dim) { st_out(ob + d, acc[r] * inv); }
    }
}
