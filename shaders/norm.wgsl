// Row normalisations over the last dimension, one workgroup per row, f32 statistics.
// * layernorm: y = (x − mean) / sqrt(var + eps) · gamma + beta   (biased variance, as PyTorch)
// * rmsnorm:   y = x / sqrt(mean(x²) + eps) · weight             (Llama)
// The mean is taken first and the variance from centred values (two reads of the row; the
// second hits the cache), which is more accurate than E[x²] − E[x]² for rows with a large mean.
// Reductions: each thread sums a strided share, one barrier, then every thread adds the
// partials itself — one barrier per statistic instead of a log2(WG)-step tree, which pays on
// lavapipe where barriers are expensive; with subgroups the partials are per subgroup. Napkin math: 12 B per element (two reads, one write).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

// One array per statistic, so the second sum needs no barrier before the first's partials
// are overwritten.
var<workgroup> partial: array<array<f32, WG>, 2>;

// The workgroup's sum of v, through partial[stat]. With subgroups each thread then adds one
// partial per subgroup, not WG of them.
fn sum(v: f32, id: Ids, stat: u32) -> f32 {
#if SUBGROUP
    let s = subgroupAdd(v);
    if (id.lane == 0u) { partial[stat][id.sg] = s; }
    let n = id.nsg;
#else
    partial[stat][id.lid] = v;
    let n = WG;
#endif
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < n; i++) { t += partial[stat][i]; }
    return t;
}

#if layernorm
@compute @workgroup_size(WG)
fn layernorm(id: Ids) {
    let lid = id.lid;
    let row = row_index(id);
    if (row >= p.rows) { return; }  // uniform per workgroup, so barriers stay in uniform flow
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += ld_x(base + c); }
    let mean = sum(s, id, 0u) / f32(p.cols);
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let d = ld_x(base + c) - mean; q += d * d; }
    let inv = inverseSqrt(sum(q, id, 1u) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        st_out(base + c, (ld_x(base + c) - mean) * inv * ld_gamma(c) + ld_beta(c));
    }
}
#endif

#if rmsnorm
@compute @workgroup_size(WG)
fn rmsnorm(id: Ids) {
    let lid = id.lid;
    let row = row_index(id);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let v = ld_x(base + c); q += v * v; }
    let inv = inverseSqrt(sum(q, id, 0u) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) { st_out(base + c, ld_x(base + c) * inv * ld_gamma(c)); }
}
#endif
