// Strided 2-D block copy of f32 tensors viewed as [rows, cols]:
//   dst[dst_row + r (+ run[row_slot]), dst_col + c] = src[src_row + r, src_col + c]
//   for r < rows, c < cols; one thread per copied element.
// The run-slot offset lets one built graph append to a KV cache at a position that changes
// every decode step. Rows that would land past the end of dst are dropped, so a bad run value
// cannot write out of bounds. Channel concat, splicing image rows into a prompt's embeddings
// and KV appends are all this kernel.
// Napkin math: pure bandwidth, 8 B per element (one f32 read, one write).

struct Params {
    rows: u32,
    cols: u32,
    src_row: u32,
    src_col: u32,
    src_stride: u32,  // columns of src
    dst_row: u32,
    dst_col: u32,
    dst_stride: u32,  // columns of dst
    dst_rows: u32,
    row_slot: u32,    // run slot added to dst_row, or NO_SLOT
}

const NO_SLOT: u32 = 0xffffffffu;

@compute @workgroup_size(WG)
fn copy(id: Ids) {
    let i = thread_index(id);
    if (i >= p.rows * p.cols) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    var dr = p.dst_row + r;
    if (p.row_slot != NO_SLOT) {
        let shift = run[p.row_slot];
        if (shift >= p.dst_rows) { return; }  // also keeps dr from wrapping around
        dr += shift;
    }
    if (dr >= p.dst_rows) { return; }
    st_dst(dr * p.dst_stride + p.dst_col + c, ld_src((p.src_row + r) * p.src_stride + p.src_col + c));
}
