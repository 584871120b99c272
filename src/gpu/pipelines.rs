//! The device's compute-pipeline cache: one compiled pipeline per (entry point, assembled
//! WGSL source), shared by every graph recorded on the device, so a kernel compiles once per
//! process however many graphs use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::codegen::TensorArg;
use super::device::Gpu;
use crate::error::{Error, Result};

/// What identifies a compiled pipeline: the entry point and the full source it was built from
/// (generated header included, so the tensor layouts and constants are part of the key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    /// Entry point in `source`.
    pub entry: &'static str,
    /// Assembled WGSL.
    pub source: String,
}

/// A pipeline with the bind-group layout it was built with.
#[derive(Clone)]
pub(crate) struct CachedPipeline {
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind_layout: Arc<wgpu::BindGroupLayout>,
}

/// Pipelines compiled on one device so far.
#[derive(Default)]
pub(crate) struct PipelineCache {
    built: Mutex<HashMap<PipelineKey, CachedPipeline>>,
}

impl PipelineCache {
    fn get(&self, key: &PipelineKey) -> Option<CachedPipeline> {
        self.built.lock().unwrap().get(key).cloned()
    }

    fn insert(&self, key: PipelineKey, p: CachedPipeline) {
        self.built.lock().unwrap().insert(key, p);
    }

    /// Every key compiled so far.
    pub fn keys(&self) -> Vec<PipelineKey> {
        self.built.lock().unwrap().keys().cloned().collect()
    }
}

fn bind_layout_entries(tensors: &[TensorArg]) -> Vec<wgpu::BindGroupLayoutEntry> {
    let entry = |binding: u32, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty,
        count: None,
    };
    let buffer = |ty| wgpu::BindingType::Buffer {
        ty,
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let storage = |read_only| buffer(wgpu::BufferBindingType::Storage { read_only });
    let mut e = vec![
        entry(0, buffer(wgpu::BufferBindingType::Uniform)),
        entry(1, storage(true)),
    ];
    for t in tensors {
        for _ in 0..t.layout.num_chunks() {
            e.push(entry(e.len() as u32, storage(t.read_only_binding)));
        }
    }
    e
}

/// Compiles (or fetches from the device's cache) the pipeline for `key`; `name` labels it.
pub(crate) fn pipeline(
    gpu: &Gpu,
    name: &str,
    key: PipelineKey,
    tensors: &[TensorArg],
) -> Result<CachedPipeline> {
    if let Some(p) = gpu.pipelines.get(&key) {
        return Ok(p);
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(key.source.as_str().into()),
        });
    let bind_layout = gpu
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &bind_layout_entries(tensors),
        });
    let layout = gpu
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: Default::default(),
            cache: None,
        });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Device(format!(
            "shader {name}.wgsl ({}) failed to build: {e}",
            key.entry
        )));
    }
    let cached = CachedPipeline {
        pipeline: Arc::new(pipeline),
        bind_layout: Arc::new(bind_layout),
    };
    gpu.pipelines.insert(key, cached.clone());
    Ok(cached)
}
