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

struct Ids {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUP
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
#endif
}

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
    let row = id.wg.x + id.wg.y * id.nwg.x;
    if (row >= p.rows) { return; } // uniform per workgroup: barriers below stay uniform
    let base = row * p.n;

    var st = vec2<f32>(LOWEST, 0.0);
    for (var i = lid; i < p.n; i += WG) {
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
        st_out(base + i, exp(src(base + i) - total.x) * inv);
    }
}
