// Window partition and merge for DaViT's window attention, over f32 tokens [B, H·W, C]
// (rows h then w) and windows [B·nWin, ws·ws, C] (window grid row-major, tokens row-major
// inside a window; the image padded bottom/right with zeros to Hp × Wp, multiples of ws).
// * window_partition: windows ← tokens, zeros at padded positions.
// * window_merge: tokens ← windows (padding cropped) + an optional residual (DaViT's
//   x = x + proj(attn(…)) fused into the un-partition): a tensor r (RESIDUAL) or out's own
//   contents (RESIDUAL_OUT, x += … in place).
// One workgroup per pixel (wg.x = column, wg.y = b·rows + row) and its threads over the
// channels, V = 4 at a time when C % 4 == 0: the pixel → window-row arithmetic is per
// workgroup (uniform), the channel copy is contiguous on both sides.
// Napkin math: pure bandwidth, 8 B per element (12 B with the residual). Stage 0 of the
// large model (192×192×256, no padding): 37.7 MB read + 37.7 MB written per pass.

struct Params {
    h: u32,       // image rows and columns
    w: u32,
    ws: u32,      // window side
    nwx: u32,     // windows per window-grid row (Wp / ws)
    nwy: u32,     // window-grid rows (Hp / ws)
    rows: u32,    // pixel rows per batch item in the dispatch: Hp (partition) or H (merge)
    c: u32,       // channels
}

// Row of the window tensor holding padded-image pixel (py, px) of batch item b.
fn window_row(b: u32, py: u32, px: u32) -> u32 {
    let win = (b * p.nwy + py / p.ws) * p.nwx + px / p.ws;
    return win * p.ws * p.ws + (py % p.ws) * p.ws + px % p.ws;
}

// Row of the token tensor holding image pixel (py, px) of batch item b.
fn token_row(b: u32, py: u32, px: u32) -> u32 {
    return (b * p.h + py) * p.w + px;
}

#if window_partition
@compute @workgroup_size(WG)
fn window_partition(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.y / p.rows;
    let py = wg.y % p.rows;
    let px = wg.x;
    let inside = py < p.h && px < p.w;
    let src = token_row(b, min(py, p.h - 1u), min(px, p.w - 1u)) * p.c;
    let dst = window_row(b, py, px) * p.c;
    for (var c = lid * V; c < p.c; c += WG * V) {
        var v = T(0.0);
        if (inside) { v = ldv_x(src + c); }
        stv_out(dst + c, v);
    }
}
#endif

#if window_merge
// The residual added to output element i: tensor r (RESIDUAL), out's own old value
// (RESIDUAL_OUT, in place), or none.
fn residual(i: u32) -> T {
#if RESIDUAL
#if VEC4
    return ld4_r(i);
#else
    return ld_r(i);
#endif
#else
#if RESIDUAL_OUT
#if VEC4
    return ld4_out(i);
#else
    return ld_out(i);
#endif
#else
    return T(0.0);
#endif
#endif
}

@compute @workgroup_size(WG)
fn window_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.y / p.rows;
    let py = wg.y % p.rows;
    let px = wg.x;
    let src = window_row(b, py, px) * p.c;
    let dst = token_row(b, py, px) * p.c;
    for (var c = lid * V; c < p.c; c += WG * V) {
        stv_out(dst + c, ldv_x(src + c) + residual(dst + c));
    }
}
#endif
