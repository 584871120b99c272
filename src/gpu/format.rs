//! Storage formats of tensor rows, shared by upload, readback, the tests' CPU references
//! and the shaders (which decode the same bits).
//!
//! * `F32`, `U32`: 4 bytes an element.
//! * `F16`: IEEE half, two per `u32` word (low half first) — read in WGSL with
//!   `unpack2x16float`, which needs no device feature.
//! * `Q8`: per row, `cols/4` words of signed bytes (4 a word, low byte first), then
//!   `ceil(cols/64)` words of f16 scales (one per block of 32). `x = q · scale`,
//!   `scale = max|x| / 127` — 8.5 bits a weight.
//! * `Q4`: per row, `cols/8` words of 4-bit codes (8 a word, low nibble first), then the
//!   scales as for `Q8`. `x = (q − 8) · scale`, `scale = max|x| / 7` with the sign of the
//!   element of largest magnitude folded in so that it maps to code 0 exactly (ggml's Q4_0
//!   trick, one more level on the side that needs it) — 4.5 bits a weight.
//!
//! Quantized rows keep their scales beside their codes so a row is one contiguous read and a
//! tensor splits into binding-sized chunks at any row boundary.

use half::f16;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half float, two a word.
    F16,
    /// 8-bit codes with an f16 scale per 32-weight block.
    Q8,
    /// 4-bit codes with an f16 scale per 32-weight block.
    Q4,
    /// 32-bit unsigned integer (token ids, indices).
    U32,
}

/// Weights per quantization block.
pub const QBLOCK: usize = 32;

impl DType {
    /// Short lowercase name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::U32 => "u32",
        }
    }

    /// True for the block-quantized types.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8 | DType::Q4)
    }

    /// Number of `u32` words that hold one row of `cols` elements (rounded up).
    pub fn row_words(self, cols: usize) -> usize {
        match self {
            DType::F32 | DType::U32 => cols,
            DType::F16 => cols.div_ceil(2),
            DType::Q8 => cols / 4 + scale_words(cols),
            DType::Q4 => cols / 8 + scale_words(cols),
        }
    }

    /// Bytes of `rows` rows stored back to back (F16 packs across rows; rounded to words).
    pub fn bytes(self, rows: usize, cols: usize) -> u64 {
        match self {
            DType::F16 => ((rows * cols).div_ceil(2) * 4) as u64,
            _ => (rows * self.row_words(cols) * 4) as u64,
        }
    }

    /// The largest magnitude a value may have and still be stored as `self` without becoming
    /// Inf: f16's largest finite value, times the largest code for the quantized types (their
    /// block scale is an f16). `None`: any finite f32 fits.
    pub fn max_magnitude(self) -> Option<f32> {
        let max = f16::MAX.to_f32();
        match self {
            DType::F16 => Some(max),
            DType::Q8 => Some(max * 127.0),
            DType::Q4 => Some(max * 8.0),
            DType::F32 | DType::U32 => None,
        }
    }

    /// Checks the constraints a dtype puts on the row length.
    pub fn check_cols(self, cols: usize) -> Result<(), String> {
        if self.is_quantized() && !cols.is_multiple_of(QBLOCK) {
            return Err(format!(
                "{} needs rows that are a multiple of {QBLOCK} long, got {cols}",
                self.name()
            ));
        }
        Ok(())
    }
}

fn scale_words(cols: usize) -> usize {
    (cols / QBLOCK).div_ceil(2)
}

/// Encodes `rows × cols` f32 values (row-major) into the storage words of `dtype`.
pub fn encode(dtype: DType, data: &[f32], cols: usize) -> Vec<u32> {
    let rows = data.len().checked_div(cols).unwrap_or(0);
    match dtype {
        DType::F32 => data.iter().map(|v| v.to_bits()).collect(),
        DType::U32 => data.iter().map(|&v| v as u32).collect(),
        DType::F16 => {
            let h: Vec<u16> = data.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            h.chunks(2)
                .map(|p| p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16)
                .collect()
        }
        DType::Q8 | DType::Q4 => {
            let mut out = Vec::with_capacity(rows * dtype.row_words(cols));
            for row in data.chunks(cols) {
                quantize_row(dtype, row, &mut out);
            }
            out
        }
    }
}

fn quantize_row(dtype: DType, row: &[f32], out: &mut Vec<u32>) {
    let mut scales = Vec::with_capacity(row.len() / QBLOCK);
    let mut codes: Vec<u8> = Vec::with_capacity(row.len());
    for block in row.chunks(QBLOCK) {
        let scale = if dtype == DType::Q8 {
            block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0
        } else {
            block
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
                / -8.0
        };
        // Round the scale to f16 first so codes are chosen for the scale the GPU will use.
        let scale = f16::from_f32(scale);
        scales.push(scale.to_bits());
        let d = scale.to_f32();
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        codes.extend(block.iter().map(|&v| match dtype {
            DType::Q8 => (v * inv).round().clamp(-127.0, 127.0) as i8 as u8,
            _ => ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8,
        }));
    }
    if dtype == DType::Q8 {
        out.extend(
            codes
                .chunks(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    } else {
        out.extend(codes.chunks(8).map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (i, &q)| w | ((q as u32) << (4 * i)))
        }));
    }
    out.extend(
        scales
            .chunks(2)
            .map(|p| p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16),
    );
}

/// Decodes storage words of `dtype` back to f32 (`rows × cols`, row-major).
pub fn decode(dtype: DType, words: &[u32], rows: usize, cols: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => words[..rows * cols]
            .iter()
            .map(|&w| f32::from_bits(w))
            .collect(),
        DType::U32 => words[..rows * cols].iter().map(|&w| w as f32).collect(),
        DType::F16 => (0..rows * cols)
            .map(|i| f16::from_bits((words[i / 2] >> (16 * (i % 2))) as u16).to_f32())
            .collect(),
        DType::Q8 | DType::Q4 => {
            let rw = dtype.row_words(cols);
            let qwords = rw - scale_words(cols);
            let mut out = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                let row = &words[r * rw..(r + 1) * rw];
                for c in 0..cols {
                    let b = c / QBLOCK;
                    let scale =
                        f16::from_bits((row[qwords + b / 2] >> (16 * (b % 2))) as u16).to_f32();
                    let q = if dtype == DType::Q8 {
                        ((row[c / 4] >> (8 * (c % 4))) & 0xff) as u8 as i8 as f32
                    } else {
                        ((row[c / 8] >> (4 * (c % 8))) & 0xf) as f32 - 8.0
                    };
                    out.push(q * scale);
                }
            }
            out
        }
    }
}
