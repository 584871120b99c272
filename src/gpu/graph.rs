//! The graph executor: a forward pass is built once per shape as a list of kernel dispatches,
//! its intermediates are planned into a few arena buffers by lifetime, and the whole graph is
//! replayed as one compute pass in one submit. Values that change from run to run (position,
//! token count, seed) live in a small `run` buffer that every kernel can read, written with
//! `queue.write_buffer` before each replay.

use std::sync::Arc;

use super::arena::{self, Lifetime, Plan};
use super::codegen::{self, Access, TensorArg};
use super::device::Gpu;
use super::format::DType;
use super::pipelines::{compile_missing, CachedPipeline, Pending, PipelineKey};
use super::tensor::{Chunk, Layout, Tensor, TENSOR_USAGE};
use crate::error::{Error, Result};

/// A tensor inside a graph: an external tensor or a planned intermediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(usize);

/// Number of u32 per-run values available to kernels (`run[i]` in WGSL).
pub const RUN_SLOTS: usize = 64;

/// One kernel launch as an op describes it.
pub struct Kernel<'a> {
    /// Shader file name, for labels and errors.
    pub name: &'static str,
    /// The WGSL of the kernel family (`include_str!` of `shaders/NAME.wgsl`).
    pub source: &'static str,
    /// Entry point in that file.
    pub entry: &'static str,
    /// Compile-time constants prepended to the source.
    pub consts: Vec<(&'static str, u32)>,
    /// Names true in the source's `#if` lines (besides the entry point and `SUBGROUP`).
    pub defines: Vec<&'static str>,
    /// Bytes of the kernel's `Params` (padded to 16 here).
    pub params: &'a [u8],
    /// Tensor arguments by accessor name.
    pub tensors: Vec<(&'static str, TensorId, Access)>,
    /// Workgroups along x, y, z.
    pub workgroups: [u32; 3],
}

impl<'a> Kernel<'a> {
    /// A launch of `entry` from the shader `(name, source)` (what `ops::shader!` gives) with
    /// its `Params`, tensors and grid; no constants or defines until [`Kernel::consts`] and
    /// [`Kernel::defines`] add them.
    pub fn new<P: bytemuck::Pod>(
        (name, source): (&'static str, &'static str),
        entry: &'static str,
        params: &'a P,
        tensors: Vec<(&'static str, TensorId, Access)>,
        workgroups: [u32; 3],
    ) -> Kernel<'a> {
        Kernel {
            name,
            source,
            entry,
            consts: Vec::new(),
            defines: Vec::new(),
            params: bytemuck::bytes_of(params),
            tensors,
            workgroups,
        }
    }

    /// Sets the compile-time constants.
    pub fn consts(mut self, consts: &[(&'static str, u32)]) -> Kernel<'a> {
        self.consts = consts.to_vec();
        self
    }

    /// Sets the names true in the source's `#if` lines.
    pub fn defines(mut self, defines: Vec<&'static str>) -> Kernel<'a> {
        self.defines = defines;
        self
    }
}

/// Splits a workgroup count over x and y so that neither exceeds the 65535 per-dimension
/// limit; kernels rebuild the linear index as `wg.x + wg.y * num_workgroups.x`.
pub fn grid(groups: u32) -> [u32; 3] {
    if groups <= 65535 {
        [groups.max(1), 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y), y, 1]
    }
}

struct Slot {
    layout: Layout,
    external: Option<Tensor>,
    first_use: Option<usize>,
    last_use: usize,
    keep: bool,
}

struct Node {
    name: &'static str,
    /// `file:entry`, for profiles.
    label: String,
    pipeline: NodePipeline,
    params_offset: u64,
    params_len: u64,
    tensors: Vec<TensorId>,
    workgroups: [u32; 3],
}

/// A node's kernel: compiled already, or to compile with the graph's other new kernels when
/// it is built (so their number is known and the wait can be shown).
enum NodePipeline {
    Ready(CachedPipeline),
    New(PipelineKey, Vec<TensorArg>),
}

/// A graph under construction.
pub struct Graph<'g> {
    gpu: &'g Gpu,
    slots: Vec<Slot>,
    nodes: Vec<Node>,
    params: Vec<u8>,
}

impl<'g> Graph<'g> {
    /// An empty graph on `gpu`.
    pub fn new(gpu: &'g Gpu) -> Self {
        Graph {
            gpu,
            slots: Vec::new(),
            nodes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The device this graph runs on.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Adds a tensor that lives outside the graph (weights, inputs, outputs, caches).
    pub fn external(&mut self, t: &Tensor) -> TensorId {
        self.slots.push(Slot {
            layout: t.layout.clone(),
            external: Some(t.clone()),
            first_use: None,
            last_use: 0,
            keep: true,
        });
        TensorId(self.slots.len() - 1)
    }

    /// Declares an intermediate; its memory is planned when the graph is built.
    pub fn tensor(&mut self, shape: &[usize], dtype: DType) -> Result<TensorId> {
        let layout = Layout::new(shape, dtype, self.gpu.max_binding)?;
        self.slots.push(Slot {
            layout,
            external: None,
            first_use: None,
            last_use: 0,
            keep: false,
        });
        Ok(TensorId(self.slots.len() - 1))
    }

    /// Declares an f32 intermediate of `like`'s shape.
    pub fn tensor_like(&mut self, like: TensorId) -> Result<TensorId> {
        let shape = self.shape(like).to_vec();
        self.tensor(&shape, DType::F32)
    }

    /// Keeps an intermediate alive to the end of the graph so it can be read after a run.
    pub fn keep(&mut self, id: TensorId) {
        self.slots[id.0].keep = true;
    }

    /// Shape of a tensor in the graph.
    pub fn shape(&self, id: TensorId) -> &[usize] {
        &self.slots[id.0].layout.shape
    }

    /// Layout of a tensor in the graph.
    pub fn layout(&self, id: TensorId) -> &Layout {
        &self.slots[id.0].layout
    }

    /// Number of dispatches recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no dispatch has been recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Records one kernel dispatch.
    pub fn dispatch(&mut self, k: Kernel) -> Result<()> {
        let node_index = self.nodes.len();
        let args: Vec<TensorArg> = k
            .tensors
            .iter()
            .map(|&(name, id, access)| {
                let slot = &self.slots[id.0];
                if access == Access::Write && !matches!(slot.layout.dtype, DType::F32 | DType::U32)
                {
                    return Err(Error::shape(format!(
                        "{}: output {name} must be f32 or u32, got {}",
                        k.name,
                        slot.layout.dtype.name()
                    )));
                }
                Ok(TensorArg {
                    name,
                    layout: slot.layout.clone(),
                    access,
                    // Read-only only where no other binding of this dispatch can alias it.
                    read_only_binding: access == Access::Read
                        && slot.external.is_some()
                        && !k.tensors.iter().any(|t| t.1 == id && t.2 == Access::Write),
                })
            })
            .collect::<Result<_>>()?;
        let bindings = codegen::storage_bindings(&args);
        let max = self.gpu.limits.max_storage_buffers_per_shader_stage as usize;
        if bindings > max {
            return Err(Error::AdapterLimits(format!(
                "a buffer binds at most {} bytes here, so a step of this model splits its tensors into {bindings} buffers, more than the {max} the adapter binds at once; use a device with larger storage bindings (step: {})",
                self.gpu.max_binding,
                k.name
            )));
        }
        let mut defines = k.defines.clone();
        defines.push(k.entry);
        if self.gpu.subgroups {
            defines.push("SUBGROUP");
        }
        let source = codegen::header(&k.consts, &args) + &codegen::preprocess(k.source, &defines);
        let key = PipelineKey {
            entry: k.entry,
            source,
        };
        let pipeline = match self.gpu.pipelines.get(&key) {
            Some(p) => NodePipeline::Ready(p),
            None => NodePipeline::New(key, args),
        };
        for &(_, id, _) in &k.tensors {
            let s = &mut self.slots[id.0];
            s.first_use.get_or_insert(node_index);
            s.last_use = node_index;
        }
        let align = self.gpu.limits.min_storage_buffer_offset_alignment as usize;
        let offset = self.params.len().next_multiple_of(align);
        self.params.resize(offset, 0);
        self.params.extend_from_slice(k.params);
        let len = k.params.len().next_multiple_of(16).max(16);
        self.params.resize(offset + len, 0);
        self.nodes.push(Node {
            name: k.name,
            label: format!("{}:{}", k.name, k.entry),
            pipeline,
            params_offset: offset as u64,
            params_len: len as u64,
            tensors: k.tensors.iter().map(|t| t.1).collect(),
            workgroups: k.workgroups,
        });
        Ok(())
    }

    /// Plans the intermediates into arenas, creates bind groups and returns the replayable graph.
    pub fn build(self) -> Result<Executable> {
        let gpu = self.gpu;
        let align = gpu.limits.min_storage_buffer_offset_alignment as u64;
        let end = self.nodes.len();
        // Every chunk of every used intermediate is one allocation with a lifetime.
        let mut allocs = Vec::new();
        let mut owners = Vec::new();
        let mut intermediate_bytes = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.external.is_some() {
                continue;
            }
            let Some(first) = s.first_use else { continue };
            let last = if s.keep { end } else { s.last_use };
            for c in 0..s.layout.num_chunks() {
                let size = s.layout.chunk_bytes(c).next_multiple_of(align);
                intermediate_bytes += size;
                allocs.push(Lifetime { size, first, last });
                owners.push(i);
            }
        }
        let max_arena = gpu.limits.max_buffer_size / align * align;
        let Plan {
            placement,
            arena_sizes,
        } = arena::plan(&allocs, max_arena)?;
        let arenas: Vec<Arc<wgpu::Buffer>> = arena_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                gpu.buffer(&format!("arena{i}"), size, TENSOR_USAGE)
                    .map(Arc::new)
            })
            .collect::<Result<_>>()?;
        let mut tensors: Vec<Option<Tensor>> =
            self.slots.iter().map(|s| s.external.clone()).collect();
        for (&owner, &(arena, offset)) in owners.iter().zip(&placement) {
            let slot = &self.slots[owner];
            let t = tensors[owner].get_or_insert_with(|| Tensor {
                layout: slot.layout.clone(),
                chunks: Vec::new(),
            });
            let c = t.chunks.len();
            t.chunks.push(Chunk {
                buffer: arenas[arena].clone(),
                offset,
                size: slot.layout.chunk_bytes(c),
            });
        }

        let params = gpu.buffer(
            "params",
            self.params.len().max(16) as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )?;
        gpu.queue.write_buffer(&params, 0, &self.params);
        let run = gpu.buffer(
            "run",
            (RUN_SLOTS * 4) as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )?;
        let pending: Vec<Pending> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.pipeline {
                NodePipeline::New(key, tensors) => Some(Pending {
                    name: n.name,
                    key,
                    tensors,
                }),
                NodePipeline::Ready(_) => None,
            })
            .collect();
        compile_missing(gpu, &pending)?;
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let p = match &n.pipeline {
                NodePipeline::Ready(p) => p.clone(),
                NodePipeline::New(key, _) => gpu.pipelines.get(key).expect("compiled above"),
            };
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: n.params_offset,
                        size: wgpu::BufferSize::new(n.params_len),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: run.as_entire_binding(),
                },
            ];
            for id in &n.tensors {
                let t = tensors[id.0].as_ref().expect("used tensor is placed");
                for ch in &t.chunks {
                    entries.push(wgpu::BindGroupEntry {
                        binding: entries.len() as u32,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &ch.buffer,
                            offset: ch.offset,
                            size: wgpu::BufferSize::new(ch.size),
                        }),
                    });
                }
            }
            let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(n.name),
                layout: &p.bind_layout,
                entries: &entries,
            });
            nodes.push(BuiltNode {
                label: n.label.clone(),
                pipeline: p.pipeline,
                bind_group,
                workgroups: n.workgroups,
            });
        }
        gpu.check()?;
        Ok(Executable {
            nodes,
            tensors,
            run,
            arena_bytes: arena_sizes.iter().sum(),
            intermediate_bytes,
        })
    }
}

struct BuiltNode {
    label: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

/// A built graph, replayable any number of times.
pub struct Executable {
    nodes: Vec<BuiltNode>,
    tensors: Vec<Option<Tensor>>,
    run: wgpu::Buffer,
    /// Bytes of arena memory holding all intermediates.
    pub arena_bytes: u64,
    /// Bytes the intermediates would take with one buffer each.
    pub intermediate_bytes: u64,
}

impl Executable {
    /// Number of dispatches in one replay.
    pub fn dispatches(&self) -> usize {
        self.nodes.len()
    }

    /// Records the whole graph into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass) {
        for n in &self.nodes {
            pass.set_pipeline(&n.pipeline);
            pass.set_bind_group(0, &n.bind_group, &[]);
            pass.dispatch_workgroups(n.workgroups[0], n.workgroups[1], n.workgroups[2]);
        }
    }

    /// Writes the per-run values (`run[0..]` in WGSL); takes effect for the next submit.
    pub fn set_run_values(&self, gpu: &Gpu, values: &[u32]) {
        assert!(values.len() <= RUN_SLOTS, "at most {RUN_SLOTS} run values");
        gpu.queue
            .write_buffer(&self.run, 0, bytemuck::cast_slice(values));
    }

    /// Replays the graph: one compute pass, one submit. Does not wait.
    pub fn submit(&self, gpu: &Gpu, run_values: &[u32]) -> Result<()> {
        self.submit_with(gpu, run_values, |_| ()).map(|_| ())
    }

    /// Replays the graph and lets `after` record more commands (e.g. copying a sampled token
    /// id to a mappable buffer) into the same submit. Does not wait; returns the submission
    /// for [`Gpu::wait_for`]. Replays queued back to back run in order (queue order), each
    /// with its own run values.
    pub(crate) fn submit_with(
        &self,
        gpu: &Gpu,
        run_values: &[u32],
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<wgpu::SubmissionIndex> {
        self.set_run_values(gpu, run_values);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.record(&mut pass);
        }
        after(&mut enc);
        let index = gpu.queue.submit([enc.finish()]);
        gpu.count_submit();
        gpu.check()?;
        Ok(index)
    }

    /// Replays the graph and waits for it to finish.
    pub fn run(&self, gpu: &Gpu, run_values: &[u32]) -> Result<()> {
        self.submit(gpu, run_values)?;
        gpu.wait()
    }

    /// Replays the graph once with a GPU timestamp before and after every dispatch and returns
    /// the time per kernel (`file:entry`, seconds, dispatch count), slowest first. Needs
    /// `TIMESTAMP_QUERY_INSIDE_PASSES`; `None` where the device lacks it.
    pub fn profile(
        &self,
        gpu: &Gpu,
        run_values: &[u32],
    ) -> Result<Option<Vec<(String, f64, usize)>>> {
        if !gpu.timestamps || self.nodes.is_empty() {
            return Ok(None);
        }
        let count = (self.nodes.len() + 1).min(wgpu::QUERY_SET_MAX_QUERIES as usize);
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: count as u32,
        });
        let bytes = (count * 8) as u64;
        let resolved = gpu.buffer(
            "profile",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let staging = gpu.buffer(
            "profile readback",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        self.set_run_values(gpu, run_values);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for (i, n) in self.nodes.iter().take(count - 1).enumerate() {
                pass.write_timestamp(&set, i as u32);
                pass.set_pipeline(&n.pipeline);
                pass.set_bind_group(0, &n.bind_group, &[]);
                pass.dispatch_workgroups(n.workgroups[0], n.workgroups[1], n.workgroups[2]);
            }
            pass.write_timestamp(&set, (count - 1) as u32);
        }
        enc.resolve_query_set(&set, 0..count as u32, &resolved, 0);
        enc.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| ());
        gpu.wait()?;
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("profile readback: {e}")))?;
        let ticks: &[u64] = bytemuck::cast_slice(&view);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut per_kernel: Vec<(String, f64, usize)> = Vec::new();
        for (i, n) in self.nodes.iter().take(count - 1).enumerate() {
            let dt = ticks[i + 1].saturating_sub(ticks[i]) as f64 * period;
            match per_kernel.iter_mut().find(|k| k.0 == n.label) {
                Some(k) => {
                    k.1 += dt;
                    k.2 += 1;
                }
                None => per_kernel.push((n.label.clone(), dt, 1)),
            }
        }
        per_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Some(per_kernel))
    }

    /// The tensor behind `id` (intermediates only while alive; [`Graph::keep`] them to read).
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        self.tensors[id.0]
            .as_ref()
            .expect("tensor was never used in the graph")
    }
}
