// Embedding gather: out[t, d] = scale · table[ids[t], d], one thread per output element.
// ids: u32 [T] (possibly written on the GPU by a sampler, so read here, never on the host);
// table: [V, D] in any weight dtype, usually split into several chunks; out: f32 [T, D].
// An id ≥ V has no row: its output row is all zeros (no out-of-bounds read).
// Napkin math: pure bandwidth, one table row read (D · bytes/weight) and 4·D bytes written
// per token; a decode step (T = 1, D = 4096) is ~24 KB of traffic.

struct Params {
    n: u32,      // elements of out (T·D)
    d: u32,      // row length D
    v: u32,      // rows of the table V
    scale: f32,
}

@compute @workgroup_size(WG)
fn embed(id: Ids) {
    let i = thread_index(id);
    if (i >= p.n) { return; }
    let tok = ldu_ids(i / p.d);
    var v = 0.0;
    if (tok < p.v) { v = ld_table(tok * p.d + i % p.d) * p.scale; }
    st_out(i, v);
}
