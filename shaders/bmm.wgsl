// Batched matrix products over strided views, for attention written as matrix products:
//   scores = scale · Q·Kᵀ   (NT: b is read as [n, k] rows)        then a masked softmax, then
//   out    = P·V            (NN: b is read as [k, n] rows)
// Batch index z = zo·BI + zi (e.g. window × head); element (z, r, c) of a view is at
//   offset + zo·stride_o + zi·stride_i + r·row_stride + c.
// Register blocking as in matmul.wgsl: each invocation owns an 8×8 output tile held in four
// mat4x4 accumulators, four k at a time, no workgroup memory (barriers are what software
// drivers pay most for). FLOPs 2·Z·M·N·K; materialising scores costs 8·Z·M·N bytes of traffic,
// cheap next to the FLOPs for attention windows (144²) and prompts of a few hundred tokens.

struct View {
    offset: u32,
    stride_o: u32,
    stride_i: u32,
    row_stride: u32,
}

struct Params {
    a: View,
    b: View,
    c: View,
    batch_inner: u32,  // BI
    m: u32,
    n: u32,
    k: u32,            // the shared dimension's extent in memory
    scale: f32,
    k_slot: u32,       // run slot that shortens k at each replay (NO_SLOT: use k)
    n_slot: u32,       // run slot that limits the columns computed (NO_SLOT: all n)
}

fn base(v: View, z: u32) -> u32 {
    return v.offset + (z / p.batch_inner) * v.stride_o + (z % p.batch_inner) * v.stride_i;
}

// Four values along k of row r of a (clamped to the last row: edge tiles read valid memory).
fn a4(z0: u32, r: u32, k: u32) -> vec4<f32> {
    let i = z0 + min(r, p.m - 1u) * p.a.row_stride + k;
#if ALIGNED
    return ld4_a(i);
#else
    return vec4<f32>(ld_a(i), ld_a(i + 1u), ld_a(i + 2u), ld_a(i + 3u));
#endif
}

#if NT
// b as [n, k]: four values along k of row c.
fn b4(z0: u32, c: u32, k: u32) -> mat4x4<f32> {
    var m: mat4x4<f32>;
    for (var j = 0u; j < 4u; j++) {
        let i = z0 + min(c + j, p.n - 1u) * p.b.row_stride + k;
#if ALIGNED
        m[j] = ld4_b(i);
#else
        m[j] = vec4<f32>(ld_b(i), ld_b(i + 1u), ld_b(i + 2u), ld_b(i + 3u));
#endif
    }
    return m;  // column j = b row c+j over k..k+3
}
#else
// b as [k, n]: rows k..k+3, columns c..c+3, transposed so column j again runs along k.
fn b4(z0: u32, c: u32, k: u32) -> mat4x4<f32> {
#if ALIGNED
    // n is a multiple of 4 here, so a tile past the edge can read the last whole column group.
    let cc = min(c, p.n - 4u);
    let i = z0 + k * p.b.row_stride + cc;
    let s = p.b.row_stride;
    return transpose(mat4x4<f32>(ld4_b(i), ld4_b(i + s), ld4_b(i + 2u * s), ld4_b(i + 3u * s)));
#else
    var m: mat4x4<f32>;
    for (var t = 0u; t < 4u; t++) {
        let i = z0 + (k + t) * p.b.row_stride;
        for (var j = 0u; j < 4u; j++) { m[j][t] = ld_b(i + min(c + j, p.n - 1u)); }
    }
    return m;
#endif
}
#endif

// Scalar k tail: (a[r][k], b[c+j][k]) for NT / (a[r][k], b[k][c+j]) for NN.
fn b1(z0: u32, c: u32, k: u32) -> vec4<f32> {
    var v: vec4<f32>;
    for (var j = 0u; j < 4u; j++) {
        let col = min(c + j, p.n - 1u);
#if NT
        v[j] = ld_b(z0 + col * p.b.row_stride + k);
#else
        v[j] = ld_b(z0 + k * p.b.row_stride + col);
#endif
    }
    return v;
}

fn store4(acc: mat4x4<f32>, z0: u32, r0: u32, c0: u32, nn: u32) {
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j >= nn) { return; }
        for (var i = 0u; i < 4u; i++) {
            if (r0 + i < p.m) { st_c(z0 + (r0 + i) * p.c.row_stride + c0 + j, acc[j][i] * p.scale); }
        }
    }
}

// One-dimensional workgroup (subgroup builtins need one): invocation i is (i % WGX, i / WGX).
@compute @workgroup_size(WGX * WGY)
fn bmm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
#if XSHARE
       @builtin(subgroup_invocation_id) lane: u32,
#endif
       ) {
    let z = wg.z;
    let r0 = (wg.y * WGY + li / WGX) * 8u;
    let c0 = (wg.x * WGX + li % WGX) * 8u;
    // Columns computed at this replay (keys filled so far); the rest are left untouched.
    let nn = min(run_value(p.n_slot, p.n), p.n);
#if XSHARE
    // A lane past the edge keeps going while others of its subgroup work (reads clamped,
    // stores checked), so all eight take part in the broadcasts.
    if (subgroupAll(r0 >= p.m || c0 >= nn)) { return; }
#else
    if (r0 >= p.m || c0 >= nn) { return; }
#endif
    let za = base(p.a, z);
    let zb = base(p.b, z);
    var a00 = mat4x4<f32>(); var a01 = mat4x4<f32>(); var a10 = mat4x4<f32>(); var a11 = mat4x4<f32>();
    // A key length read at each replay (a growing KV cache): only that many k take part.
    let kk = min(run_value(p.k_slot, p.k), p.k);
    let k4 = kk & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
#if XSHARE
        // The subgroup's 8 lanes share r0 (as in matmul.wgsl): lane i loads row r0 + i.
        let v = a4(za, r0 + lane, k);
        let x0 = mat4x4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
        let x1 = mat4x4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
#else
        let x0 = mat4x4<f32>(a4(za, r0, k), a4(za, r0 + 1u, k), a4(za, r0 + 2u, k), a4(za, r0 + 3u, k));
        let x1 = mat4x4<f32>(a4(za, r0 + 4u, k), a4(za, r0 + 5u, k), a4(za, r0 + 6u, k), a4(za, r0 + 7u, k));
#endif
        let w0 = b4(zb, c0, k);
        let w1 = b4(zb, c0 + 4u, k);
        a00 += transpose(x0) * w0; a01 += transpose(x0) * w1;
        a10 += transpose(x1) * w0; a11 += transpose(x1) * w1;
    }
    for (var k = k4; k < kk; k++) {
        var xv: vec4<f32>; var xw: vec4<f32>;
        for (var i = 0u; i < 4u; i++) {
            xv[i] = ld_a(za + min(r0 + i, p.m - 1u) * p.a.row_stride + k);
            xw[i] = ld_a(za + min(r0 + 4u + i, p.m - 1u) * p.a.row_stride + k);
        }
        let wv = b1(zb, c0, k);
        let ww = b1(zb, c0 + 4u, k);
        // Column j = x · w[j] (the layout of transpose(X)·W).
        a00 += mat4x4<f32>(xv * wv.x, xv * wv.y, xv * wv.z, xv * wv.w);
        a01 += mat4x4<f32>(xv * ww.x, xv * ww.y, xv * ww.z, xv * ww.w);
        a10 += mat4x4<f32>(xw * wv.x, xw * wv.y, xw * wv.z, xw * wv.w);
        a11 += mat4x4<f32>(xw * ww.x, xw * ww.y, xw * ww.z, xw * ww.w);
    }
    let zc = base(p.c, z);
    store4(a00, zc, r0, c0, nn); store4(a01, zc, r0, c0 + 4u, nn);
    store4(a10, zc, r0 + 4u, c0, nn); store4(a11, zc, r0 + 4u, c0 + 4u, nn);
}
