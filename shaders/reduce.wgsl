// Column sums over row segments of an f32 [B, N, C] tensor, scaled:
//   out[b, s, c] = scale · Σ_{n in segment s} x[b, n, c],  segments of `seg` rows.
// A mean over tokens is one dispatch when N fits one segment (scale 1/N), else two: the
// partial sums per segment, then the same kernel over the [B, nseg, C] partials with one
// segment and scale 1/N — a two-level reduction whose chains are both about √N long.
// One thread per V = 4 (C % 4 == 0) or 1 columns, wg.x = column block, wg.y = segment,
// wg.z = batch; neighbouring threads read neighbouring columns of one row (coalesced on GPUs,
// one vector load on CPU drivers), f32 accumulation, no barriers.
// Napkin math: 4 B read per element, ~1 FLOP; the image head's [576, 2048] mean reads 4.7 MB,
// a [36864, 256] stage-0 mean 37.7 MB plus 0.2 MB of partials: bandwidth bound.

struct Params {
    rows: u32,    // N, rows per batch item
    c: u32,       // columns
    seg: u32,     // rows per segment
    nseg: u32,    // segments per batch item
    scale: f32,
}

@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = (wg.x * WG + lid) * V;
    if (c >= p.c) { return; }
    let r0 = wg.y * p.seg;
    let r1 = min(r0 + p.seg, p.rows);
    let base = wg.z * p.rows * p.c + c;
    // Two accumulators halve the dependent-add chain.
    var a = T(0.0);
    var b = T(0.0);
    var r = r0;
    for (; r + 1u < r1; r += 2u) {
        a += ldv_x(base + r * p.c);
        b += ldv_x(base + (r + 1u) * p.c);
    }
    if (r < r1) { a += ldv_x(base + r * p.c); }
    stv_out((wg.z * p.nseg + wg.y) * p.c + c, (a + b) * p.scale);
}
