
// ---- shaders/row_ids.wgsl, appended to kernels that take one row per workgroup or one
// invocation per element ----
// The builtins such a kernel reads, in one struct (with the subgroup ones where the device
// has subgroups), the row its workgroup owns (2-D grids for more than 65535 rows) and the
// element its invocation owns (workgroups of WG).
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

fn row_index(id: Ids) -> u32 {
    return id.wg.x + id.wg.y * id.nwg.x;
}

fn thread_index(id: Ids) -> u32 {
    return row_index(id) * WG + id.lid;
}
