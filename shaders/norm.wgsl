// Row normalisations over the last dimension, one workgroup per row, f32 statistics.
// * layernorm: y = (x − mean) / sqrt(var + eps) · gamma + beta   (biased variance, as PyTorch)
// * rmsnorm:   y = x / sqrt(mean(x²) + eps) · weight             (Llama)
// The mean is taken first and the variance from centred values (two reads of the row; the
// second hits the cache), which is more accurate than E[x²] − E[x]² for rows with a large mean.
// Reductions: each thread sums a strided share, one barrier, then every thread adds the WG
// partials itself — one barrier per statistic instead of a log2(WG)-step tree, which pays on
// lavapipe where barriers are expensive. Napkin math: 12 B per element (two reads, one write).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

var<workgroup> part_a: array<f32, WG>;
var<workgroup> part_b: array<f32, WG>;

fn row_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

fn sum_a(v: f32, lid: u32) -> f32 {
    part_a[lid] = v;
    workgroupBarrier();
    var s = 0.0;
    for (var i = 0u; i < WG; i++) { s += part_a[i]; }
    return s;
}

fn sum_b(v: f32, lid: u32) -> f32 {
    part_b[lid] = v;
    workgroupBarrier();
    var s = 0.0;
    for (var i = 0u; i < WG; i++) { s += part_b[i]; }
    return s;
}

#if layernorm
@compute @workgroup_size(WG)
fn layernorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg);
    if (row >= p.rows) { return; }  // uniform per workgroup, so barriers stay in uniform flow
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += ld_x(base + c); }
    let mean = sum_a(s, lid) / f32(p.cols);
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let d = ld_x(base + c) - mean; q += d * d; }
    let inv = inverseSqrt(sum_b(q, lid) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        st_out(base + c, (ld_x(base + c) - mean) * inv * ld_gamma(c) + ld_beta(c));
    }
}
#endif

#if rmsnorm
@compute @workgroup_size(WG)
fn rmsnorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let v = ld_x(base + c); q += v * v; }
    let inv = inverseSqrt(sum_a(q, lid) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) { st_out(base + c, ld_x(base + c) * inv * ld_gamma(c)); }
}
#endif
