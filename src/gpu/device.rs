//! Adapter choice and device creation.
//!
//! We ask for the adapter's own maximum limits (ML tensors need big bindings) and turn on
//! `SHADER_F16`, `SUBGROUP` and `TIMESTAMP_QUERY` where offered. Device errors and loss are
//! caught by callbacks and surfaced as [`Error`]s at the next synchronisation point instead
//! of panicking inside wgpu.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::pipelines::PipelineCache;
use crate::error::{Error, Result, Setting};

/// Environment variable naming the adapter (name substring or index), like `--device`.
pub const ENV_ADAPTER: &str = "FVL_ADAPTER";
/// Environment variable that lowers the storage-binding limit (bytes), so small tests
/// exercise the chunked-tensor path.
pub const ENV_MAX_BINDING: &str = "FVL_MAX_BINDING";

/// Environment variable: when set (and not `0`), devices open with [`portable_limits`]
/// instead of the adapter's own, as [`GpuOptions::portable_limits`] asks.
pub const ENV_PORTABLE_LIMITS: &str = "FVL_PORTABLE_LIMITS";

/// `limits` lowered to a floor that the Apple, Intel, AMD and NVIDIA desktop drivers all
/// exceed (WebGPU's defaults): 256 invocations per workgroup, 16 KiB of workgroup memory,
/// 8 storage buffers per shader stage and 128 MiB storage bindings. Kernels that fit these
/// run on any desktop GPU; tests open a device with them to prove it on a large adapter.
pub fn portable_limits(limits: &wgpu::Limits) -> wgpu::Limits {
    let floor = wgpu::Limits::default();
    // Each named limit is the lower of the adapter's and the floor's; the rest as offered.
    macro_rules! lowered {
        ($($limit:ident),*) => {
            wgpu::Limits {
                $($limit: limits.$limit.min(floor.$limit),)*
                ..limits.clone()
            }
        };
    }
    lowered!(
        max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x,
        max_compute_workgroup_size_y,
        max_compute_workgroup_size_z,
        max_compute_workgroup_storage_size,
        max_storage_buffers_per_shader_stage,
        max_storage_buffer_binding_size
    )
}

/// How to pick and configure a device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter name substring (case-insensitive) or index in `fvl-wgpu devices` order.
    /// `None`: `FVL_ADAPTER`, else the best adapter (discrete > integrated > virtual > CPU).
    pub adapter: Option<String>,
    /// Artificial cap on the storage-binding size in bytes (`FVL_MAX_BINDING` when `None`).
    pub max_binding: Option<u64>,
    /// Pretend `SHADER_F16` and `SUBGROUP` are absent, to test the fallback paths.
    pub disable_optional_features: bool,
    /// Open the device with [`portable_limits`] (also when `FVL_PORTABLE_LIMITS` is set), so
    /// that work needing more than the portable floor fails here as it would elsewhere.
    pub portable_limits: bool,
    /// Open the device with its largest buffer lowered to this many bytes (at least 1 KiB):
    /// allocations past it fail as on an adapter that holds less. For fault tests.
    pub max_buffer_size: Option<u64>,
    /// Called with each warning as it happens (e.g. a weight kept in f32 because it does not
    /// fit f16); `None` keeps them for [`Gpu::take_warnings`].
    pub on_warning: Option<fn(&str)>,
}

/// What `fvl-wgpu devices` prints for one adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Position in the adapter list (what `--device INDEX` takes).
    pub index: usize,
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Graphics API backend (Vulkan, Metal, Dx12, …).
    pub backend: String,
    /// Discrete, integrated, virtual or CPU.
    pub device_type: String,
    /// Driver name and version info.
    pub driver: String,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding in bytes.
    pub max_storage_binding: u64,
    /// Workgroup shared memory in bytes.
    pub max_workgroup_storage: u32,
    /// Most invocations in one compute workgroup.
    pub max_invocations: u32,
    /// Most storage buffers one shader stage may bind.
    pub max_storage_buffers_per_stage: u32,
    /// Subgroup size range `(min, max)` in invocations.
    pub subgroup_size: (u32, u32),
    /// `SHADER_F16` is offered.
    pub shader_f16: bool,
    /// `SUBGROUP` is offered.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY` is offered.
    pub timestamps: bool,
}

impl AdapterSummary {
    /// The summary as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "index": self.index, "name": self.name, "backend": self.backend,
            "type": self.device_type, "driver": self.driver,
            "max_buffer_size": self.max_buffer_size,
            "max_storage_buffer_binding_size": self.max_storage_binding,
            "max_compute_workgroup_storage_size": self.max_workgroup_storage,
            "max_compute_invocations_per_workgroup": self.max_invocations,
            "max_storage_buffers_per_shader_stage": self.max_storage_buffers_per_stage,
            "subgroup_size": [self.subgroup_size.0, self.subgroup_size.1],
            "features": {"shader_f16": self.shader_f16, "subgroup": self.subgroups, "timestamp_query": self.timestamps},
        })
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

const NO_ADAPTER_HELP: &str = "no GPU adapter found: install a Vulkan, Metal or DX12 driver \
(on Debian/Ubuntu without a GPU: `apt-get install mesa-vulkan-drivers libvulkan1` for the software \
Vulkan driver), and check WGPU_BACKEND if it is set";

fn summarize(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let l = a.limits();
    let f = a.features();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        max_buffer_size: l.max_buffer_size,
        max_storage_binding: l.max_storage_buffer_binding_size,
        max_workgroup_storage: l.max_compute_workgroup_storage_size,
        max_invocations: l.max_compute_invocations_per_workgroup,
        max_storage_buffers_per_stage: l.max_storage_buffers_per_shader_stage,
        subgroup_size: (info.subgroup_min_size, info.subgroup_max_size),
        shader_f16: f.contains(wgpu::Features::SHADER_F16),
        subgroups: f.contains(wgpu::Features::SUBGROUP),
        timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
    }
}

/// Lists every adapter wgpu can see, in the order `--device INDEX` uses.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .iter()
        .enumerate()
        .map(|(i, a)| summarize(i, a))
        .collect()
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The adapter a user named, and where: a library setting (a front end names it its own way)
/// or the environment variable (named as it is).
enum Wanted<'a> {
    Setting(&'a str),
    Env(&'a str),
}

/// Opens the adapter `want` names (its index or part of its name), else the best one.
fn pick_adapter(list: Vec<wgpu::Adapter>, want: Option<Wanted>) -> Result<wgpu::Adapter> {
    if list.is_empty() {
        return Err(Error::NoAdapter(NO_ADAPTER_HELP.into()));
    }
    let names: Vec<String> = list
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i}: {}", a.get_info().name))
        .collect();
    match want {
        Some(wanted) => {
            let choices = format!("the adapters are {}", names.join(", "));
            let w = match wanted {
                Wanted::Setting(w) | Wanted::Env(w) => w,
            };
            // What follows the name of the setting or variable the user set.
            let fail = |rest: String| match wanted {
                Wanted::Setting(_) => Error::setting(Setting::Adapter, "", rest),
                Wanted::Env(_) => Error::NoAdapter(format!("{ENV_ADAPTER}{rest}")),
            };
            if let Ok(i) = w.parse::<usize>() {
                return list
                    .into_iter()
                    .nth(i)
                    .ok_or_else(|| fail(format!(" {i}: there is no adapter {i}; {choices}")));
            }
            let lw = w.to_lowercase();
            list.into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&lw))
                .ok_or_else(|| fail(format!(" {w:?} matches no adapter; {choices}")))
        }
        None => {
            // Prefer real GPUs, and among equals a backend with compute shaders that we test (Vulkan).
            let mut list = list;
            list.sort_by_key(|a| {
                let i = a.get_info();
                (type_rank(i.device_type), i.backend == wgpu::Backend::Gl)
            });
            Ok(list.into_iter().next().expect("non-empty"))
        }
    }
}

type ErrorSlot = Arc<Mutex<Option<String>>>;

/// An open device with its queue, capabilities and pipeline cache.
pub struct Gpu {
    /// The wgpu device (crate-only: models record graphs, they never touch wgpu).
    pub(crate) device: wgpu::Device,
    /// The device's submission queue.
    pub(crate) queue: wgpu::Queue,
    /// Name, backend and type of the adapter.
    pub info: wgpu::AdapterInfo,
    /// Limits the device was opened with (the adapter's maximum, or lower as
    /// [`GpuOptions`] asked).
    pub limits: wgpu::Limits,
    /// Opened with [`portable_limits`].
    pub portable: bool,
    /// Storage-binding size every tensor chunk must fit (possibly lowered by options).
    pub max_binding: u64,
    /// `SHADER_F16` is enabled on the device.
    pub shader_f16: bool,
    /// `SUBGROUP` is enabled on the device.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY` (and inside passes) is enabled.
    pub timestamps: bool,
    /// Neighbouring invocations run as SIMD lanes of one CPU thread (software drivers such as
    /// lavapipe), so kernels pick layouts where lanes share loads rather than coalesce them.
    /// Set from the adapter type; tests flip it to cover both layouts on one device.
    pub cpu_style_kernels: bool,
    pub(crate) pipelines: PipelineCache,
    error: ErrorSlot,
    on_warning: Option<fn(&str)>,
    warnings: Mutex<Vec<String>>,
    submits: AtomicU64,
}

impl Gpu {
    /// Opens the adapter chosen by `opts` with its maximum limits.
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let instance = instance();
        let env_adapter = std::env::var(ENV_ADAPTER).ok();
        let want = match (&opts.adapter, &env_adapter) {
            (Some(a), _) => Some(Wanted::Setting(a.as_str())),
            (None, Some(e)) => Some(Wanted::Env(e.as_str())),
            (None, None) => None,
        };
        let adapter = pick_adapter(adapters(&instance), want)?;
        let info = adapter.get_info();
        let offered = adapter.features();
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            | wgpu::Features::PIPELINE_CACHE;
        if !opts.disable_optional_features {
            wanted |= wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        }
        let features = offered & wanted;
        let mut limits = adapter.limits();
        let env_portable = std::env::var(ENV_PORTABLE_LIMITS).ok();
        let portable =
            opts.portable_limits || env_portable.is_some_and(|v| !v.is_empty() && v != "0");
        if portable {
            limits = portable_limits(&limits);
        }
        if let Some(max) = opts.max_buffer_size {
            limits.max_buffer_size = limits.max_buffer_size.min(max.max(1 << 10));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fvl-wgpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device(format!("cannot open {}: {e}", info.name)))?;

        let error: ErrorSlot = Arc::new(Mutex::new(None));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap();
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        let slot = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut s = slot.lock().unwrap();
            if s.is_none() {
                let why = match reason {
                    wgpu::DeviceLostReason::Destroyed => "destroyed".to_string(),
                    _ => format!("lost by the driver ({msg})"),
                };
                *s = Some(format!(
                    "the GPU device was {why}; open a new one (restart the model) to continue"
                ));
            }
        });

        let env_binding = std::env::var(ENV_MAX_BINDING).ok();
        let lowered = match (opts.max_binding, env_binding) {
            (Some(b), _) => Some(b),
            (None, Some(s)) => Some(s.trim().parse::<u64>().map_err(|_| {
                Error::input(format!("{ENV_MAX_BINDING}={s:?}: expected a byte count"))
            })?),
            (None, None) => None,
        };
        let device_binding =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let max_binding = lowered.map_or(device_binding, |b| b.clamp(256, device_binding)) & !3;
        let pipelines = PipelineCache::new(
            &device,
            &info,
            features.contains(wgpu::Features::PIPELINE_CACHE),
        );
        Ok(Gpu {
            cpu_style_kernels: info.device_type == wgpu::DeviceType::Cpu,
            device,
            queue,
            info,
            max_binding,
            portable,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            limits,
            pipelines,
            error,
            on_warning: opts.on_warning,
            warnings: Mutex::new(Vec::new()),
            submits: AtomicU64::new(0),
        })
    }

    /// Whether kernels whose neighbouring invocations read the same values should load them
    /// once per subgroup and broadcast (`XSHARE` in the shaders): CPU-style kernels with
    /// subgroups of exactly 8 lanes, since on CPU drivers every lane's storage load is a
    /// scalar load (docs/perf.md). The kernels assume, as llvmpipe does, that a subgroup is
    /// eight consecutive invocations (the conformance table checks it).
    pub fn lanes_share_loads(&self) -> bool {
        self.cpu_style_kernels
            && self.subgroups
            && self.info.subgroup_min_size == 8
            && self.info.subgroup_max_size == 8
    }

    /// The adapter is a CPU (software) device such as lavapipe, where work sized for a GPU
    /// takes minutes.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Seconds this device has spent compiling kernels (first runs; report it apart from
    /// the model's own time).
    pub fn compile_seconds(&self) -> f64 {
        self.pipelines.compile_seconds()
    }

    /// Returns the first device error (validation, out-of-memory, loss) since the last check.
    pub fn check(&self) -> Result<()> {
        match self.error.lock().unwrap().take() {
            None => Ok(()),
            Some(msg) if msg.to_lowercase().contains("out of memory") => {
                Err(Error::OutOfMemory(msg))
            }
            Some(msg) => Err(Error::Device(msg)),
        }
    }

    /// Blocks until all submitted work has finished, then reports any device error.
    pub fn wait(&self) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.polled(polled)
    }

    /// The outcome of a poll: the device error recorded first (a loss reported by the
    /// callback explains a failed wait better than the wait's own message), else the poll's.
    fn polled(&self, polled: Result<wgpu::PollStatus, wgpu::PollError>) -> Result<()> {
        self.check()?;
        // wgpu's own text (a timeout, a submission it never accepted) names its internals.
        polled.map_err(|_| {
            Error::Device(
                "the GPU stopped taking work (device lost or reset); open a new device (restart the model) to continue".into(),
            )
        })?;
        Ok(())
    }

    /// Blocks until one submission has finished (later ones may still run), then reports
    /// any device error.
    pub(crate) fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        });
        self.polled(polled)
    }

    /// Reports a warning: to [`GpuOptions::on_warning`] if set, else kept for
    /// [`Gpu::take_warnings`].
    pub(crate) fn warn(&self, msg: String) {
        match self.on_warning {
            Some(f) => f(&msg),
            None => self.warnings.lock().unwrap().push(msg),
        }
    }

    /// The warnings recorded since the last call (none when [`GpuOptions::on_warning`] takes
    /// them as they happen).
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.warnings.lock().unwrap())
    }

    /// Allocates a buffer, turning an allocation failure into [`Error::OutOfMemory`].
    pub fn buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        if size > self.limits.max_buffer_size {
            return Err(Error::AdapterLimits(format!(
                "buffer {label} needs {size} bytes, the adapter allows {}",
                self.limits.max_buffer_size
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory(format!(
                "allocating {label} ({size} bytes): {e}"
            )));
        }
        Ok(buf)
    }

    /// Every (entry point, WGSL source) compiled on this device so far; the portability test
    /// translates them for Metal and DX12.
    pub fn shader_sources(&self) -> Vec<(String, String)> {
        self.pipelines
            .keys()
            .into_iter()
            .map(|k| (k.entry.to_string(), k.source))
            .collect()
    }

    /// The weight precision to use when the caller names none: f16 where the device has
    /// `SHADER_F16`, else f32.
    pub fn default_dtype(&self) -> super::format::DType {
        if self.shader_f16 {
            super::format::DType::F16
        } else {
            super::format::DType::F32
        }
    }

    /// Copy bandwidth, the ceiling benchmarks compare with: bytes read + written per second
    /// by `reps` copies of `bytes` in one submit, best of `trials` after a warm-up.
    pub fn copy_bandwidth(&self, bytes: u64, reps: usize, trials: usize) -> Result<f64> {
        let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let a = self.buffer("copy src", bytes, usage)?;
        let b = self.buffer("copy dst", bytes, usage)?;
        let mut best = f64::INFINITY;
        for trial in 0..=trials {
            let mut enc = self.device.create_command_encoder(&Default::default());
            for _ in 0..reps {
                enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
            }
            let t = std::time::Instant::now();
            self.queue.submit([enc.finish()]);
            self.wait()?;
            if trial > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * bytes as f64 * reps as f64 / best)
    }

    /// Destroys the device as a driver reset or removal would; every later use reports a
    /// device error. For fault-handling tests.
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Number of graph submits so far (tests check that a graph is one submit).
    pub fn submits(&self) -> u64 {
        self.submits.load(Ordering::Relaxed)
    }

    pub(crate) fn count_submit(&self) {
        self.submits.fetch_add(1, Ordering::Relaxed);
    }

    /// One-line description: name, backend, type (and the portable limits when asked for).
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}{})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            if self.portable { ", portable limits" } else { "" }
        )
    }
}
