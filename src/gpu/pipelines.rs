//! The device's compute-pipeline cache: one compiled pipeline per (entry point, assembled
//! WGSL source), shared by every graph recorded on the device, so a kernel compiles once per
//! process however many graphs use it. A graph's new kernels compile together when it is
//! built ([`compile_missing`]), with a progress bar on stderr when that takes a while.
//!
//! Across processes, the driver's compiled code persists in wgpu's pipeline cache where the
//! backend offers one (Vulkan: `Features::PIPELINE_CACHE`), in
//! `$XDG_CACHE_HOME/fvl-wgpu/` (else `~/.cache/fvl-wgpu/`; `FVL_CACHE_DIR` overrides), written
//! through a temporary file and a rename. Corrupt or foreign data there is ignored (wgpu
//! checks it and falls back to an empty cache).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The driver-level cache persisted on disk.
struct DiskCache {
    cache: wgpu::PipelineCache,
    path: PathBuf,
}

/// Pipelines compiled on one device so far.
#[derive(Default)]
pub(crate) struct PipelineCache {
    built: Mutex<HashMap<PipelineKey, CachedPipeline>>,
    disk: Option<DiskCache>,
    compile_nanos: AtomicU64,
}

/// `FVL_CACHE_DIR`, else `$XDG_CACHE_HOME/fvl-wgpu`, else `~/.cache/fvl-wgpu`.
fn cache_dir() -> Option<PathBuf> {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("FVL_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("fvl-wgpu")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/fvl-wgpu")))
}

impl PipelineCache {
    /// The cache of a device opened with `Features::PIPELINE_CACHE` (`persist`), loading what
    /// an earlier process saved for this adapter.
    pub fn new(device: &wgpu::Device, info: &wgpu::AdapterInfo, persist: bool) -> PipelineCache {
        let path = wgpu::util::pipeline_cache_key(info)
            .filter(|_| persist)
            .and_then(|key| Some(cache_dir()?.join(key)));
        let disk = path.map(|path| {
            let data = std::fs::read(&path).ok();
            // SAFETY: the data is what `get_data` wrote for an adapter with this key; with
            // `fallback` wgpu validates its header (adapter, driver, size, hash) and starts
            // empty when it does not match, and drivers validate their own part.
            let cache = unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("fvl-wgpu"),
                    data: data.as_deref(),
                    fallback: true,
                })
            };
            DiskCache { cache, path }
        });
        PipelineCache {
            disk,
            ..Default::default()
        }
    }

    /// Seconds spent compiling kernels in this process.
    pub fn compile_seconds(&self) -> f64 {
        self.compile_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Writes the driver cache to disk (temp file + rename); a failure only costs speed.
    fn save(&self) {
        let Some(d) = &self.disk else { return };
        let Some(data) = d.cache.get_data() else { return };
        let Some(dir) = d.path.parent() else { return };
        // Unique per process and save: devices in other threads save too.
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let n = SAVES.fetch_add(1, Ordering::Relaxed);
        let tmp = d.path.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let ok = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, &data))
            .and_then(|_| std::fs::rename(&tmp, &d.path));
        if ok.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    pub(crate) fn get(&self, key: &PipelineKey) -> Option<CachedPipeline> {
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
        entry(0, storage(true)),
        entry(1, storage(true)),
    ];
    for t in tensors {
        for _ in 0..t.layout.num_chunks() {
            e.push(entry(e.len() as u32, storage(t.read_only_binding)));
        }
    }
    e
}

/// A kernel a graph needs that the device has not compiled yet.
pub(crate) struct Pending<'a> {
    /// Shader file name, for messages.
    pub name: &'static str,
    pub key: &'a PipelineKey,
    pub tensors: &'a [TensorArg],
}

/// Compiles the kernels of `pending` the device does not have yet (each distinct key once).
/// When that takes more than two seconds it says so on stderr, with a progress bar on a
/// terminal: on a first run with a software driver it can take tens of seconds.
pub(crate) fn compile_missing(gpu: &Gpu, pending: &[Pending]) -> Result<()> {
    let mut seen = HashSet::new();
    let todo: Vec<&Pending> = pending
        .iter()
        .filter(|p| gpu.pipelines.get(p.key).is_none() && seen.insert(p.key))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let mut bar: Option<indicatif::ProgressBar> = None;
    for (i, p) in todo.iter().enumerate() {
        if bar.is_none() && start.elapsed() > Duration::from_secs(2) {
            eprintln!("compiling {} GPU kernels (first run only)…", todo.len());
            let b = indicatif::ProgressBar::new(todo.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("  {bar:30} {pos}/{len} kernels") {
                b.set_style(style);
            }
            b.set_position(i as u64);
            bar = Some(b);
        }
        compile(gpu, p.name, p.key, p.tensors)?;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    let took = start.elapsed();
    gpu.pipelines
        .compile_nanos
        .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    if let Some(b) = bar {
        b.finish_and_clear();
        eprintln!(
            "compiled {} GPU kernels in {:.1} s",
            todo.len(),
            took.as_secs_f64()
        );
    }
    gpu.pipelines.save();
    Ok(())
}

/// Compiles the pipeline for `key` into the device's cache; `name` labels it.
fn compile(gpu: &Gpu, name: &str, key: &PipelineKey, tensors: &[TensorArg]) -> Result<()> {
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
            cache: gpu.pipelines.disk.as_ref().map(|d| &d.cache),
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
    gpu.pipelines.insert(key.clone(), cached);
    Ok(())
}
