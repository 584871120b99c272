// Linear layers: out[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]), i.e. x·Wᵀ + b with PyTorch's
// [out, in] weight layout. x, out f32; w f32, f16, q8 or q4 (dequantized on load); f32
// accumulation.
//
// Two kernels:
// * `matmul*` (many rows of x): register blocking, each invocation owns a TM×TN output tile
//   and walks k four at a time, no workgroup memory. On lavapipe this beats shared-memory
//   tiling 2–4× because barriers are expensive there (docs/perf.md). FLOPs 2·M·N·K; traffic
//   ≈ 4·M·K·N/TN + |W|·M/TM bytes through the caches.
// * `matvec*` (1 ≤ M ≤ 8 rows, decode): bandwidth-bound, each weight read once for all M rows.
//   TPR threads share one weight row, each walks 32-element blocks (a whole q8/q4 block with
//   its scale), partial sums meet in workgroup memory after one barrier. Bytes: |W| + M·K·4.
//
// Defines: BIAS adds the bias; Q8/Q4 make `matvec` decode the packed blocks directly.

struct Params {
    m: u32,   // rows of x / out
    n: u32,   // rows of w = columns of out
    k: u32,   // shared dimension
}

#if BIAS
fn bias(n: u32) -> f32 { return ld_b(n); }
#else
fn bias(n: u32) -> f32 { return 0.0; }
#endif

#if matmul
// Workgroup: WGX × WGY invocations, each computing TM rows × TN columns.
@compute @workgroup_size(WGX, WGY)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = (wg.y * WGY + lid.y) * TM;
    let n0 = (wg.x * WGX + lid.x) * TN;
    if (m0 >= p.m || n0 >= p.n) { return; }
    var acc: array<array<f32, TN>, TM>;
    // Row starts, clamped so edge tiles read valid memory; their results are not stored.
    var xrow: array<u32, TM>;
    var wrow: array<u32, TN>;
    for (var i = 0u; i < TM; i++) { xrow[i] = min(m0 + i, p.m - 1u) * p.k; }
    for (var j = 0u; j < TN; j++) { wrow[j] = min(n0 + j, p.n - 1u) * p.k; }
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        var wv: array<vec4<f32>, TN>;
        for (var j = 0u; j < TN; j++) { wv[j] = ld4_w(wrow[j] + k); }
        for (var i = 0u; i < TM; i++) {
            let xv = ld4_x(xrow[i] + k);
            for (var j = 0u; j < TN; j++) { acc[i][j] += dot(xv, wv[j]); }
        }
    }
    for (var k = k4; k < p.k; k++) {
        for (var i = 0u; i < TM; i++) {
            let xv = ld_x(xrow[i] + k);
            for (var j = 0u; j < TN; j++) { acc[i][j] += xv * ld_w(wrow[j] + k); }
        }
    }
    for (var j = 0u; j < TN; j++) {
        let n = n0 + j;
        if (n >= p.n) { break; }
        let b = bias(n);
        for (var i = 0u; i < TM; i++) {
            if (m0 + i < p.m) { st_out((m0 + i) * p.n + n, acc[i][j] + b); }
        }
    }
}
#endif

#if matvec
// MR rows of x; RPW weight rows per workgroup, TPR threads per weight row.
var<workgroup> partial: array<f32, MR * RPW * TPR>;

// Dot products of one 32-element block of weight row n (starting at column c) with MR rows of x.
fn block_dot(n: u32, c: u32, acc: ptr<function, array<f32, MR>>) {
#if Q8
    let base = n * W_RW;
    let sw = ldw_w(base + W_QW + c / 64u);
    let scale = unpack2x16float(sw)[(c / 32u) & 1u];
    var wv: array<vec4<f32>, 8>;
    for (var q = 0u; q < 8u; q++) { wv[q] = vec4<f32>(unpack4xI8(ldw_w(base + c / 4u + q))) * scale; }
#else
#if Q4
    let base = n * W_RW;
    let sw = ldw_w(base + W_QW + c / 64u);
    let scale = unpack2x16float(sw)[(c / 32u) & 1u];
    var wv: array<vec4<f32>, 8>;
    for (var q = 0u; q < 4u; q++) {
        let word = ldw_w(base + c / 8u + q);
        let lo = vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u);
        let hi = vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u);
        wv[2u * q] = (vec4<f32>(lo & vec4<u32>(15u)) - 8.0) * scale;
        wv[2u * q + 1u] = (vec4<f32>(hi & vec4<u32>(15u)) - 8.0) * scale;
    }
#else
    var wv: array<vec4<f32>, 8>;
    for (var q = 0u; q < 8u; q++) { wv[q] = ld4_w(n * p.k + c + 4u * q); }
#endif
#endif
    for (var r = 0u; r < MR; r++) {
        var s = 0.0;
        for (var q = 0u; q < 8u; q++) { s += dot(ld4_x(r * p.k + c + 4u * q), wv[q]); }
        (*acc)[r] += s;
    }
}

@compute @workgroup_size(RPW * TPR)
fn matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let slot = lid / TPR;          // which weight row of this workgroup
    let t = lid % TPR;             // which share of that row
    let n_raw = (wg.x + wg.y * nwg.x) * RPW + slot;
    let n = min(n_raw, p.n - 1u);  // edge workgroups compute a duplicate row, not stored
    var acc: array<f32, MR>;
    let full = p.k / 32u;
    for (var b = t; b < full; b += TPR) { block_dot(n, b * 32u, &acc); }
    // Tail of a row that is not a multiple of 32 long (float weights only).
    for (var c = full * 32u + t; c < p.k; c += TPR) {
        let wv = ld_w(n * p.k + c);
        for (var r = 0u; r < MR; r++) { acc[r] += ld_x(r * p.k + c) * wv; }
    }
    for (var r = 0u; r < MR; r++) { partial[(r * RPW + slot) * TPR + t] = acc[r]; }
    workgroupBarrier();
    if (t == 0u && n_raw < p.n) {
        for (var r = 0u; r < MR; r++) {
            var s = 0.0;
            for (var i = 0u; i < TPR; i++) { s += partial[(r * RPW + slot) * TPR + i]; }
            st_out(r * p.n + n, s + bias(n));
        }
    }
}
#endif
