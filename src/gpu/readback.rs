//! Reading one chosen token id back per step without stalling the GPU: two 4-byte staging
//! buffers, so the step after a step can be queued before the first one's id is read.

use super::device::Gpu;
use super::graph::Executable;
use super::tensor::Tensor;
use crate::error::{Error, Result};

/// A queued replay whose completion [`TokenReadback::read`] waits for.
pub struct Submission(wgpu::SubmissionIndex);

/// Two mappable 4-byte copies of a one-word tensor (the id a sampler writes).
pub struct TokenReadback {
    staging: [wgpu::Buffer; 2],
}

impl TokenReadback {
    /// Allocates the two staging buffers.
    pub fn new(gpu: &Gpu) -> Result<TokenReadback> {
        let buffer = || {
            gpu.buffer(
                "token readback",
                4,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )
        };
        Ok(TokenReadback {
            staging: [buffer()?, buffer()?],
        })
    }

    /// Queues one replay of `exe` with `run_values`, then a copy of `word`'s first word into
    /// staging buffer `slot` (0 or 1).
    pub fn submit(
        &self,
        gpu: &Gpu,
        exe: &Executable,
        run_values: &[u32],
        word: &Tensor,
        slot: usize,
    ) -> Result<Submission> {
        let src = &word.chunks[0];
        let index = exe.submit_with(gpu, run_values, |enc| {
            enc.copy_buffer_to_buffer(&src.buffer, src.offset, &self.staging[slot], 0, 4)
        })?;
        Ok(Submission(index))
    }

    /// Waits for `submission` and returns the word it copied into staging buffer `slot`.
    pub fn read(&self, gpu: &Gpu, slot: usize, submission: Submission) -> Result<u32> {
        let staging = &self.staging[slot];
        let slice = staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| ());
        gpu.wait_for(submission.0)?;
        let word = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Device(format!("reading the next token: {e}")))?;
            u32::from_le_bytes([view[0], view[1], view[2], view[3]])
        };
        staging.unmap();
        Ok(word)
    }
}
