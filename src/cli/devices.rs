//! `fvl-wgpu devices`.

use fvl_wgpu::gpu::list_adapters;
use fvl_wgpu::{Error, Result};

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

pub fn run(json: bool) -> Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            "no GPU adapter found: install a Vulkan, Metal or DX12 driver (on Debian/Ubuntu without a GPU: \
             `apt-get install mesa-vulkan-drivers libvulkan1`)"
                .into(),
        ));
    }
    if json {
        let list: Vec<_> = adapters.iter().map(|a| a.to_json()).collect();
        println!("{}", serde_json::json!({ "adapters": list }));
        return Ok(());
    }
    for a in &adapters {
        println!(
            "[{}] {} — {} {}, driver {}",
            a.index, a.name, a.backend, a.device_type, a.driver
        );
        println!(
            "    max buffer {}, max storage binding {}, workgroup storage {} KiB, {} invocations/workgroup, {} storage buffers/stage",
            mib(a.max_buffer_size),
            mib(a.max_storage_binding),
            a.max_workgroup_storage / 1024,
            a.max_invocations,
            a.max_storage_buffers_per_stage
        );
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "    shader_f16 {}, subgroups {} (size {}..{}), timestamps {}",
            yes(a.shader_f16),
            yes(a.subgroups),
            a.subgroup_size.0,
            a.subgroup_size.1,
            yes(a.timestamps)
        );
    }
    Ok(())
}
