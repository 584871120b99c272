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
            if (m0 + i < p.m) { st_out((m0 + i) * p.n + n, acc[j][i] + b); }
        }
    }
}

@compute @workgroup_size(WGX, WGY)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = (wg.y * WGY + lid.y) * 8u;
    let n0 = (wg.x * WGX + lid.x) * 8u;
    if (m0 >= p.m || n0 >= p.n) { return; }
    let lm = p.m - 1u;
    let ln = p.n - 1u;
    var a00 = mat4x4<f32>(); var a01 = mat4x4<f32>(); var a10 = mat4x4<f32>(); var a11 = mat4x4<f32>();
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        let x0 = x_rows4(m0, k);
        let x1 = x_rows4(m0 + 4u, k);
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
