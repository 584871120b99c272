// Softmax over the last dimension of an f32 [rows, n] tensor, out of place (x → out) or in
// place (out → out), with f32 statistics. One workgroup of WG threads per row.
//
// Two passes over the row: each thread keeps an online (max, sum of exp) pair over its
// strided elements, the pairs are merged across the workgroup (subgroup ops and one barrier
// where the device has subgroups, a workgroup-memory tree otherwise), then each thread
// writes exp(x − max) / sum for its elements. Any n works (a 32k row is ~125 per thread).
// Napkin math: 12 B per element (two reads, one write) and 2–3 exps: bandwidth bound.

struct Params {
    n: u32,     // row length
    rows: u32,
    // Masking for attention scores laid out as [z, tq, n]: row r is query i = r % tq, which
    // sees keys j < len_i, len_i = kv_len (or kv_len − tq + i + 1 when causal). Later
    // entries become 0. No mask: tq = 1, kv_len = n, causal = 0.
    tq: u32,
    len_slot: u32,
    len_fixed: u32,
    causal: u32,
    window: u32,  // with causal: only the last `window` of the len_i keys take part (0: all)
}

// Number of leading entries of `row` that take part.
fn valid_len(row: u32) -> u32 {
    let kv = min(run_value(p.len_slot, p.len_fixed), p.n);
    if (p.causal == 0u) { return kv; }
    let reach = kv + row % p.tq + 1u;  // kv − tq + i + 1, kept unsigned
    if (reach <= p.tq) { return 0u; }
    return min(kv, reach - p.tq);
}

// First entry of a row with `len` leading entries that takes part (a sliding window).
fn first_valid(len: u32) -> u32 {
    return select(0u, len - p.window, p.window > 0u && len > p.window);
}

// Smallest finite f32: a neutral "max" that, unlike −inf, keeps exp(m − m) = 1 finite.
const LOWEST: f32 = -3.4028235e38;

#if softmax
fn src(i: u32) -> f32 { return ld_x(i); }
#else
fn src(i: u32) -> f32 { return ld_out(i); }
#endif

// Merges two (max, sum of exp(x − max)) pairs.
fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// Per-subgroup pairs (subgroup path) or per-thread pairs merged as a tree (fallback).
var<workgroup> partial: array<vec2<f32>, WG>;

#if softmax
@compute @workgroup_size(WG)
fn softmax(id: Ids) { softmax_row(id); }
#endif

#if softmax_inplace
@compute @workgroup_size(WG)
fn softmax_inplace(id: Ids) { softmax_row(id); }
#endif

fn softmax_row(id: Ids) {
    let lid = id.lid;
    let row = row_index(id);
    if (row >= p.rows) { return; } // uniform per workgroup: barriers below stay uniform
    let base = row * p.n;
    let len = valid_len(row);
    let first = first_valid(len);

    var st = vec2<f32>(LOWEST, 0.0);
    for (var i = first + lid; i < len; i += WG) {
        let x = src(base + i);
        let m = max(st.x, x);
        st = vec2<f32>(m, st.y * exp(st.x - m) + exp(x - m));
    }

#if SUBGROUP
    let m = subgroupMax(st.x);
    let s = subgroupAdd(st.y * exp(st.x - m));
    if (id.lane == 0u) { partial[id.sg] = vec2<f32>(m, s); }
    workgroupBarrier();
    var total = partial[0];
    for (var k = 1u; k < id.nsg; k++) { total = merge(total, partial[k]); }
#else
    partial[lid] = st;
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if (lid < w) { partial[lid] = merge(partial[lid], partial[lid + w]); }
    }
    workgroupBarrier();
    let total = partial[0];
#endif

    let inv = 1.0 / total.y;
    for (var i = lid; i < p.n; i += WG) {
        st_out(base + i, select(0.0, exp(src(base + i) - total.x) * inv, i >= first && i < len));
    }
}
