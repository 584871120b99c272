//! Tensors on the GPU: a shape, a dtype and storage split into row chunks.
//!
//! A tensor's rows are all dimensions but the last. Whenever the tensor is larger than the
//! device's storage-binding limit it is stored as several chunks of whole rows, each bound
//! separately; kernels see one flat index space through generated accessors (`codegen`).

use std::sync::Arc;

use super::device::Gpu;
use super::format::{self, DType};
use crate::error::{Error, Result};

/// How a tensor of a given shape and dtype is split into chunks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Dimensions, outermost first; the last is the row length.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Rows in every chunk but possibly the last.
    pub rows_per_chunk: usize,
}

impl Layout {
    /// The chunking of `shape`/`dtype` under a binding limit of `max_binding` bytes.
    pub fn new(shape: &[usize], dtype: DType, max_binding: u64) -> Result<Layout> {
        if shape.is_empty() || shape.contains(&0) {
            return Err(Error::shape(format!(
                "tensor shape {shape:?} has no elements"
            )));
        }
        let cols = *shape.last().unwrap();
        dtype.check_cols(cols).map_err(Error::Shape)?;
        let rows: usize = shape[..shape.len() - 1].iter().product();
        // F16 packs two elements a word across rows, so an f16 chunk must hold an even
        // number of elements unless it is the only chunk.
        let row_bytes = dtype.bytes(1, cols).max(1);
        let mut per = (max_binding / row_bytes) as usize;
        if dtype == DType::F16 && cols % 2 == 1 && per < rows {
            per -= per % 2;
        }
        if per == 0 {
            return Err(Error::AdapterLimits(format!(
                "one row of a {shape:?} {} tensor needs {row_bytes} bytes, more than the {max_binding}-byte storage binding limit",
                dtype.name()
            )));
        }
        Ok(Layout {
            shape: shape.to_vec(),
            dtype,
            rows_per_chunk: per.min(rows),
        })
    }

    /// Length of the last dimension.
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap()
    }
    /// Product of all dimensions but the last.
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len() - 1].iter().product()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of chunks.
    pub fn num_chunks(&self) -> usize {
        self.rows().div_ceil(self.rows_per_chunk)
    }
    /// Rows held by chunk `c`.
    pub fn chunk_rows(&self, c: usize) -> usize {
        (self.rows() - c * self.rows_per_chunk).min(self.rows_per_chunk)
    }
    /// Bytes of chunk `c` (a multiple of 4).
    pub fn chunk_bytes(&self, c: usize) -> u64 {
        self.dtype.bytes(self.chunk_rows(c), self.cols())
    }
    /// Total bytes over all chunks.
    pub fn bytes(&self) -> u64 {
        (0..self.num_chunks()).map(|c| self.chunk_bytes(c)).sum()
    }
}

/// One chunk: a range of a buffer holding whole rows.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// Buffer holding the chunk (shared between views of it).
    pub buffer: Arc<wgpu::Buffer>,
    /// Byte offset of the chunk in `buffer`.
    pub offset: u64,
    /// Byte length of the chunk.
    pub size: u64,
}

/// A tensor resident on the GPU.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Shape, dtype and chunking.
    pub layout: Layout,
    /// Storage of each chunk, in row order.
    pub chunks: Vec<Chunk>,
}

/// Usages every tensor buffer gets: bound as storage, copied from (readback) and to (upload).
pub const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Tensor {
    /// Allocates an uninitialised tensor, one buffer per chunk.
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let layout = Layout::new(shape, dtype, gpu.max_binding)?;
        let chunks = (0..layout.num_chunks())
            .map(|c| {
                let size = layout.chunk_bytes(c);
                let buffer = gpu.buffer(&format!("{label}[{c}]"), size, TENSOR_USAGE)?;
                Ok(Chunk {
                    buffer: Arc::new(buffer),
                    offset: 0,
                    size,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Tensor { layout, chunks })
    }

    /// Uploads f32 host data, converting to `dtype` (F16 rounding, Q8/Q4 quantization).
    /// Values too large for `dtype` (|x| > 65504 in f16; a block scale past it when
    /// quantized) would become Inf: such a tensor is kept in f32 instead, and the device
    /// records a warning naming it ([`Gpu::take_warnings`]).
    pub fn from_f32(
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        data: &[f32],
        label: &str,
    ) -> Result<Tensor> {
        let mut dtype = dtype;
        if let Some(limit) = dtype.max_magnitude() {
            let largest = data.iter().fold(0f32, |m, v| m.max(v.abs()));
            if largest > limit {
                gpu.warn(format!(
                    "{label}: holds {largest:e}, beyond what {} can store ({limit:e}); kept in f32",
                    dtype.name()
                ));
                dtype = DType::F32;
            }
        }
        let t = Tensor::empty(gpu, shape, dtype, label)?;
        if data.len() != t.layout.numel() {
            return Err(Error::shape(format!(
                "{label}: {} values given for shape {shape:?} ({} elements)",
                data.len(),
                t.layout.numel()
            )));
        }
        t.write_f32(gpu, data)?;
        Ok(t)
    }

    /// Uploads u32 values (token ids, indices).
    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32], label: &str) -> Result<Tensor> {
        let t = Tensor::empty(gpu, shape, DType::U32, label)?;
        if data.len() != t.layout.numel() {
            return Err(Error::shape(format!(
                "{label}: {} ids for shape {shape:?}",
                data.len()
            )));
        }
        t.write_words(gpu, data);
        Ok(t)
    }

    /// Overwrites the contents from f32 host data, converting to the tensor's dtype.
    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        let cols = self.layout.cols();
        let mut row = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            let rows = self.layout.chunk_rows(c);
            let words = format::encode(
                self.layout.dtype,
                &data[row * cols..(row + rows) * cols],
                cols,
            );
            gpu.queue
                .write_buffer(&chunk.buffer, chunk.offset, bytemuck::cast_slice(&words));
            row += rows;
        }
        gpu.check()
    }

    /// Overwrites the contents with raw storage words (already in the tensor's format),
    /// laid out as if the tensor were one chunk.
    pub fn write_words(&self, gpu: &Gpu, words: &[u32]) {
        let mut at = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            let n = (self.layout.chunk_bytes(c) / 4) as usize;
            gpu.queue.write_buffer(
                &chunk.buffer,
                chunk.offset,
                bytemuck::cast_slice(&words[at..at + n]),
            );
            at += n;
        }
    }

    /// Fills every byte with `byte` (tests poison outputs with 0xFF, a NaN in f32 and f16).
    pub fn fill(&self, gpu: &Gpu, byte: u8) {
        for chunk in &self.chunks {
            gpu.queue.write_buffer(
                &chunk.buffer,
                chunk.offset,
                &vec![byte; chunk.size as usize],
            );
        }
    }

    /// Reads the raw storage words of every chunk, concatenated.
    pub fn read_words(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let total = self.layout.bytes();
        let staging = gpu.buffer(
            "readback",
            total,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let mut at = 0;
        for chunk in &self.chunks {
            enc.copy_buffer_to_buffer(&chunk.buffer, chunk.offset, &staging, at, chunk.size);
            at += chunk.size;
        }
        gpu.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.wait()?;
        rx.recv()
            .map_err(|_| Error::Device("readback never completed".into()))?
            .map_err(|e| Error::Device(format!("mapping readback buffer: {e}")))?;
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("readback: {e}")))?;
        Ok(bytemuck::cast_slice(&view).to_vec())
    }

    /// Reads the tensor back as f32 (dequantizing quantized types).
    pub fn read_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let words = self.read_words(gpu)?;
        let cols = self.layout.cols();
        let mut out = Vec::with_capacity(self.layout.numel());
        let mut at = 0;
        for c in 0..self.chunks.len() {
            let rows = self.layout.chunk_rows(c);
            let n = (self.layout.chunk_bytes(c) / 4) as usize;
            out.extend(format::decode(
                self.layout.dtype,
                &words[at..at + n],
                rows,
                cols,
            ));
            at += n;
        }
        Ok(out)
    }

    /// Reads a U32 tensor back.
    pub fn read_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let mut w = self.read_words(gpu)?;
        w.truncate(self.layout.numel());
        Ok(w)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.layout.shape
    }

    /// The same storage seen with another shape of the same dtype (e.g. a `[beams, capacity,
    /// width]` cache as a table of rows). The chunks must fall on the same rows under both
    /// shapes, so every chunk keeps its bytes.
    pub fn view_as(&self, gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let layout = Layout::new(shape, self.layout.dtype, gpu.max_binding)?;
        let same_chunks = layout.num_chunks() == self.chunks.len()
            && (0..self.chunks.len()).all(|c| layout.chunk_bytes(c) == self.layout.chunk_bytes(c));
        if !same_chunks {
            return Err(Error::shape(format!(
                "a {:?} tensor cannot be viewed as {shape:?}: its storage chunks would split differently",
                self.layout.shape
            )));
        }
        Ok(Tensor {
            layout,
            chunks: self.chunks.clone(),
        })
    }
}
