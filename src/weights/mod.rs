//! Checkpoints on disk: `config.json` plus safetensors (one file, an index with shards, or
//! whatever `*.safetensors` files a folder holds) or PyTorch `pytorch_model.bin` (one file or
//! an index with shards, see [`torch`]), memory-mapped, read one tensor at a time. The same
//! files may also be held in memory ([`Checkpoint::from_memory`]).
//!
//! [`Checkpoint`] knows files, names, shapes and dtypes; which names a model expects is the
//! business of the per-model maps ([`florence2`], [`llama`], [`florence_vl`]).
//!
//! Owns: files, hub ids and the HF cache, configs, tensor names and their validation. Must not
//! touch: the GPU (tensors leave here as host floats or packed words), forward passes.

pub mod florence2;
pub mod florence_vl;
pub mod hub;
pub mod llama;
pub mod torch;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::slice::HalfFloatSliceExt;
use memmap2::Mmap;
use safetensors::{SafeTensorError, SafeTensors};

use crate::{Error, Result, Setting};

pub use safetensors::Dtype;

use crate::gpu::DType;

/// The packed format named by a tensor's suffix (`.q8`, `.q4`).
fn packed_suffix(name: &str) -> Option<DType> {
    match name.rsplit('.').next() {
        Some("q8") => Some(DType::Q8),
        Some("q4") => Some(DType::Q4),
        _ => None,
    }
}

/// The bytes of one weights file: mapped from disk, or handed over in memory.
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One weights file (safetensors or torch.save).
struct Shard {
    path: PathBuf,
    map: Bytes,
}

/// Where one tensor's bytes are: which shard, at which byte range of that shard's map.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// An opened model folder: its parsed `config.json` and every tensor of its weight files.
///
/// Files are memory-mapped, so opening costs the headers only; [`Checkpoint::load_f32`]
/// converts one tensor at a time.
pub struct Checkpoint {
    dir: PathBuf,
    /// Files held in memory by name (for [`Checkpoint::from_memory`]); `None` reads `dir`.
    memory: Option<BTreeMap<String, Vec<u8>>>,
    config: serde_json::Value,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";
const TORCH_INDEX: &str = "pytorch_model.bin.index.json";
const TORCH_SINGLE: &str = "pytorch_model.bin";

impl Checkpoint {
    /// Opens `dir`: `config.json`, then the weights — `model.safetensors.index.json` (every
    /// shard it lists must exist and hold the tensors mapped to it), else `model.safetensors`,
    /// else every `*.safetensors` file in the folder, else the PyTorch files
    /// `pytorch_model.bin.index.json` or `pytorch_model.bin` (`torch.save` archives).
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        Checkpoint::open_files(dir.as_ref().to_path_buf(), None)
    }

    /// A checkpoint from files held in memory, by file name (`config.json`,
    /// `model.safetensors` or shards with their index, `pytorch_model.bin`, …), opened by the
    /// same rules as a folder: for weights that never touch the disk, and for fuzzing the
    /// header and index parsers without files. Errors name the files as given.
    pub fn from_memory(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<Checkpoint> {
        Checkpoint::open_files(PathBuf::new(), Some(files.into_iter().collect()))
    }

    fn open_files(
        dir: PathBuf,
        memory: Option<BTreeMap<String, Vec<u8>>>,
    ) -> Result<Checkpoint> {
        let mut ckpt = Checkpoint {
            dir: dir.clone(),
            memory,
            config: serde_json::Value::Null,
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        ckpt.config = ckpt.read_json("config.json")?;
        if ckpt.is_file(INDEX) {
            ckpt.open_indexed(INDEX)?;
        } else if ckpt.is_file(SINGLE) {
            ckpt.add_shard(SINGLE, None)?;
        } else {
            let files = ckpt.safetensors_files()?;
            if !files.is_empty() {
                for f in files {
                    ckpt.add_shard(&f, None)?;
                }
            } else if ckpt.is_file(TORCH_INDEX) {
                ckpt.open_indexed(TORCH_INDEX)?;
            } else if ckpt.is_file(TORCH_SINGLE) {
                ckpt.add_shard(TORCH_SINGLE, None)?;
            } else {
                return Err(Error::file(
                    &dir,
                    format!(
                        "no weights: no {INDEX}, {SINGLE} or other .safetensors file, and no \
                         {TORCH_INDEX} or {TORCH_SINGLE}"
                    ),
                ));
            }
        }
        Ok(ckpt)
    }

    /// Whether the folder (or the in-memory files) holds the file `name`.
    fn is_file(&self, name: &str) -> bool {
        match &self.memory {
            Some(files) => files.contains_key(name),
            None => self.dir.join(name).is_file(),
        }
    }

    /// Reads and parses the JSON file `name`; the error names the file.
    fn read_json(&self, name: &str) -> Result<serde_json::Value> {
        let path = self.dir.join(name);
        match &self.memory {
            Some(files) => match files.get(name) {
                Some(bytes) => parse_json(&path, bytes),
                None => Err(Error::file(&path, "no such file")),
            },
            None => read_json(&path),
        }
    }

    /// The weights file `name`: mapped from the folder, or taken from the in-memory files.
    fn take_bytes(&mut self, name: &str) -> Result<Bytes> {
        let path = self.dir.join(name);
        if let Some(files) = &mut self.memory {
            return files
                .remove(name)
                .map(Bytes::Owned)
                .ok_or_else(|| Error::file(&path, "no such file"));
        }
        let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified by another process while we run
        // is outside what any loader can defend against (every mmap-based loader shares this).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(&path, e))?;
        Ok(Bytes::Mapped(map))
    }

    /// `*.safetensors` files directly in the folder (or in memory), sorted by name.
    fn safetensors_files(&self) -> Result<Vec<String>> {
        let is_weights = |name: &str| Path::new(name).extension().is_some_and(|x| x == "safetensors");
        let mut files: Vec<String> = match &self.memory {
            Some(files) => files.keys().filter(|n| is_weights(n)).cloned().collect(),
            None => std::fs::read_dir(&self.dir)
                .map_err(|e| Error::file(&self.dir, e))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_weights(n))
                .collect(),
        };
        files.sort();
        Ok(files)
    }

    /// Opens the shards a `weight_map` index (`index`, a file name in the folder) lists.
    fn open_indexed(&mut self, index: &str) -> Result<()> {
        let index_path = self.dir.join(index);
        let json = self.read_json(index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::file(&index_path, "no \"weight_map\" object"))?;
        // Shard file → tensor names the index expects there, in file-name order.
        let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::file(
                    &index_path,
                    format!("weight_map[\"{name}\"] is not a file name"),
                )
            })?;
            // Checked by name before anything is opened: no file outside the folder is
            // touched, and whether one exists is not revealed.
            if !inside_folder(file) {
                return Err(Error::file(
                    &index_path,
                    format!(
                        "weight_map[\"{name}\"] names the shard \"{file}\", which is not inside \
                         the model folder; shard names must be relative paths without \"..\""
                    ),
                ));
            }
            by_file.entry(file).or_default().push(name);
        }
        // Check all shards exist before mapping any, so the error lists every missing one.
        let missing: Vec<&str> = by_file
            .keys()
            .copied()
            .filter(|f| !self.is_file(f))
            .collect();
        if !missing.is_empty() {
            return Err(Error::file(
                &index_path,
                format!("lists shard(s) that do not exist: {}", missing.join(", ")),
            ));
        }
        for (file, names) in by_file {
            self.add_shard(file, Some((&names, index)))?;
        }
        Ok(())
    }

    /// Maps the file `name` and records its tensors: all of them, or only `wanted` (the names
    /// an index maps to this shard, each of which must be there, and the index's file name).
    fn add_shard(&mut self, name: &str, wanted: Option<(&[&str], &str)>) -> Result<()> {
        let map = self.take_bytes(name)?;
        let path = &self.dir.join(name);
        let shard = self.shards.len();
        let torch = path.extension().is_some_and(|x| x == "bin");
        let mut found = file_entries(path, &map, shard, torch)?;
        // Without an index every tensor in the file is taken; with one, exactly its names.
        let names: Vec<String> = match wanted {
            Some((names, _)) => names.iter().map(|n| n.to_string()).collect(),
            None => found.keys().cloned().collect(),
        };
        for name in names {
            let entry = found.remove(&name).ok_or_else(|| {
                let index = wanted.map_or("the index", |(_, index)| index);
                Error::file(
                    path,
                    format!("has no tensor {name}, but {index} maps it to this file"),
                )
            })?;
            if let Some(old) = self.tensors.insert(name.clone(), entry) {
                let other = self.file_of(&old);
                return Err(Error::file(path, format!("tensor {name} is also in {other}")));
            }
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files opened, in the order they were mapped.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Shape and stored dtype of a tensor.
    pub fn info(&self, name: &str) -> Result<(&[usize], Dtype)> {
        let e = self.entry(name)?;
        Ok((&e.shape, e.dtype))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::file(&self.dir, format!("no tensor named {name}")))
    }

    /// File name (not the full path) a tensor is stored in, for messages.
    fn file_of(&self, e: &Entry) -> String {
        let p = &self.shards[e.shard].path;
        p.file_name()
            .map_or_else(|| p.display().to_string(), |f| f.to_string_lossy().into())
    }

    /// Checks a stored tensor's shape; the error names the tensor, its file and both shapes.
    fn check_shape(&self, name: &str, expected: &[usize]) -> Result<&Entry> {
        let e = self.entry(name)?;
        if e.shape != expected {
            return Err(Error::shape(format!(
                "{name}: shape {:?} in {}, expected {expected:?}",
                e.shape,
                self.file_of(e)
            )));
        }
        Ok(e)
    }

    /// Loads a tensor as f32 (from BF16, F16 or F32), checking its shape is `expected` and
    /// that every value is finite (a NaN or Inf weight turns every answer into garbage).
    pub fn load_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let e = self.check_shape(name, expected)?;
        let values = self.convert_f32(name, e)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::file(
                &self.shards[e.shard].path,
                format!(
                    "tensor {name} holds {} at element {i}; weights must be finite numbers (corrupt or diverged checkpoint)",
                    values[i]
                ),
            ));
        }
        Ok(values)
    }

    fn convert_f32(&self, name: &str, e: &Entry) -> Result<Vec<f32>> {
        let bytes = &self.shards[e.shard].map[e.start..e.end];
        Ok(match e.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => match bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
                // Aligned halves on a little-endian host: half's vectorised conversion
                // (F16C where the CPU has it) is several times the scalar loop below.
                Ok(halves) if cfg!(target_endian = "little") => {
                    let mut out = vec![0.0; halves.len()];
                    halves.convert_to_f32_slice(&mut out);
                    out
                }
                _ => bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            },
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::File {
                    path: self.shards[e.shard].path.display().to_string(),
                    msg: format!(
                    "tensor {name} is stored as {other:?}; only F32, F16 and BF16 load as floats"
                ),
                })
            }
        })
    }

    /// The packed format of a checkpoint written by the `quantize` command (its linear weights
    /// are stored as `NAME.q8` / `NAME.q4` u32 tensors), or `None` for an ordinary one.
    pub fn stored_quant(&self) -> Option<DType> {
        self.tensors.keys().find_map(|n| packed_suffix(n))
    }

    /// Pre-quantized words of `name` (`[rows, cols]` as `dtype`) when the checkpoint stores it
    /// packed (`NAME.q4`, shape `[rows, row_words]`, u32); `None` when it stores it as floats.
    pub fn load_packed(
        &self,
        name: &str,
        dtype: DType,
        [rows, cols]: [usize; 2],
    ) -> Result<Option<Vec<u32>>> {
        let packed = format!("{name}.{}", dtype.name());
        if !self.contains(&packed) {
            if let Some(other) = [DType::Q8, DType::Q4]
                .into_iter()
                .find(|d| self.contains(&format!("{name}.{}", d.name())))
            {
                return Err(Error::setting(
                    Setting::WeightStorage,
                    format!(
                        "{}: {name} is stored quantized as {} (a packed checkpoint); it cannot be loaded as {} — use ",
                        self.dir.display(),
                        other.name(),
                        dtype.name()
                    ),
                    format!(" {} or the original checkpoint", other.name()),
                ));
            }
            return Ok(None);
        }
        let e = self.check_shape(&packed, &[rows, dtype.row_words(cols)])?;
        if e.dtype != Dtype::U32 {
            return Err(Error::file(
                &self.shards[e.shard].path,
                format!("{packed} is {:?}, expected U32 words", e.dtype),
            ));
        }
        let bytes = &self.shards[e.shard].map[e.start..e.end];
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    /// Raw bytes, dtype and shape of a tensor as stored (for copying it unchanged).
    pub fn raw(&self, name: &str) -> Result<(&[u8], Dtype, &[usize])> {
        let e = self.entry(name)?;
        Ok((&self.shards[e.shard].map[e.start..e.end], e.dtype, &e.shape))
    }

    /// Loads a 2-D tensor stored as the transpose of what is wanted: the file holds
    /// `[c, r]`, the result is `[r, c]` = `expected_after`, row-major.
    pub fn load_f32_transposed(&self, name: &str, expected_after: [usize; 2]) -> Result<Vec<f32>> {
        let [r, c] = expected_after;
        let stored = self.load_f32(name, &[c, r]).map_err(|err| match err {
            Error::Shape(msg) => Error::Shape(format!(
                "{msg} (stored transposed: {expected_after:?} after transposing)"
            )),
            other => other,
        })?;
        let mut out = vec![0.0; r * c];
        for (i, row) in stored.chunks_exact(r.max(1)).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[j * c + i] = v;
            }
        }
        Ok(out)
    }
}

/// Every tensor of a mapped file (torch.save when `torch`, else safetensors) as entries of
/// shard number `shard`.
fn file_entries(
    path: &Path,
    map: &[u8],
    shard: usize,
    torch: bool,
) -> Result<BTreeMap<String, Entry>> {
    let tensors: Vec<(String, Dtype, Vec<usize>, Range<usize>)> = if torch {
        let found = torch::parse(map).map_err(|e| Error::file(path, e))?;
        found
            .into_iter()
            .map(|(name, t)| (name, t.dtype, t.shape, t.start..t.end))
            .collect()
    } else {
        let (header_len, meta) =
            SafeTensors::read_metadata(map).map_err(|e| Error::file(path, describe(&e, map)))?;
        let data = 8 + header_len;
        meta.tensors()
            .into_iter()
            .map(|(name, t)| {
                let (start, end) = t.data_offsets;
                (name, t.dtype, t.shape.clone(), data + start..data + end)
            })
            .collect()
    };
    Ok(tensors
        .into_iter()
        .map(|(name, dtype, shape, bytes)| {
            let (start, end) = (bytes.start, bytes.end);
            (
                name,
                Entry {
                    shard,
                    dtype,
                    shape,
                    start,
                    end,
                },
            )
        })
        .collect())
}

/// Whether a shard name from an index stays inside the model folder: a relative path of
/// plain components (no `..`, no root, no drive).
fn inside_folder(file: &str) -> bool {
    let path = Path::new(file);
    !file.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Reads and parses a JSON file; the error names the file.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    parse_json(path, &text)
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// A safetensors parse error in words, with the sizes involved where they explain it.
fn describe(err: &SafeTensorError, bytes: &[u8]) -> String {
    let len = bytes.len();
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match err {
        SafeTensorError::HeaderTooSmall => {
            format!("not a safetensors file: {len} bytes, too short for the 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge => format!(
            "corrupt safetensors header: header length {} is over the format's 100 MB limit",
            header_len.unwrap_or(0)
        ),
        SafeTensorError::InvalidHeaderLength => format!(
            "corrupt safetensors header: header length {} runs past the end of the file ({len} bytes)",
            header_len.unwrap_or(0)
        ),
        SafeTensorError::InvalidHeader(e) => {
            format!("corrupt safetensors header (not UTF-8): {e}")
        }
        SafeTensorError::InvalidHeaderDeserialization(e) => header_entry_problem(bytes)
            .unwrap_or_else(|| format!("corrupt safetensors header (not valid JSON): {e}")),
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => {
            header_entry_problem(bytes)
                .unwrap_or_else(|| format!("corrupt safetensors header: {err}"))
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let start = 8 + header_len.unwrap_or(0) as usize;
            let have = len.saturating_sub(start);
            // The header parsed, so its largest end offset is what the data section needs.
            let need = serde_json::from_slice::<serde_json::Value>(&bytes[8..start])
                .ok()
                .and_then(|h| {
                    h.as_object()?
                        .values()
                        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                        .max()
                })
                .unwrap_or(0);
            format!(
                "tensor data offsets run to byte {need} of the data section, but the file holds \
                 {have} data bytes (truncated or corrupt file)"
            )
        }
        _ => format!("corrupt safetensors file: {err}"),
    }
}

/// The first tensor entry of a header that is valid JSON but not a valid safetensors entry,
/// in words: an unknown dtype, or a shape whose size differs from its `data_offsets`.
fn header_entry_problem(bytes: &[u8]) -> Option<String> {
    let header_len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(header_len)?)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    header.iter().filter(|(k, _)| *k != "__metadata__").find_map(|(name, t)| {
        let dtype = t.get("dtype")?;
        let Ok(dtype) = serde_json::from_value::<safetensors::Dtype>(dtype.clone()) else {
            return Some(format!("unsupported dtype {dtype} for tensor {name}"));
        };
        let shape: Vec<u64> = serde_json::from_value(t.get("shape")?.clone()).ok()?;
        let offsets: [u64; 2] = serde_json::from_value(t.get("data_offsets")?.clone()).ok()?;
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |n, &d| n.checked_mul(d));
        let span = offsets[1].checked_sub(offsets[0]);
        match (bits, span) {
            (Some(b), Some(s)) if b % 8 == 0 && b / 8 == s => None,
            (None, _) => Some(format!("tensor {name}: shape {shape:?} is too large")),
            _ => Some(format!(
                "tensor {name}: shape {shape:?} of {dtype:?} needs {} bytes, but data_offsets {offsets:?} span {}",
                bits.unwrap_or(0).div_ceil(8),
                span.map_or_else(|| "backwards".to_string(), |s| s.to_string())
            )),
        }
    })
}

/// Writes `ck` to `out` with every 2-D tensor that `quantize(name)` selects (and whose rows
/// are whole blocks) stored packed as `NAME.q8`/`NAME.q4` u32 words, the rest unchanged, plus
/// the folder's other files (config, tokenizer). A later load copies the words straight to the
/// GPU. Host memory: the packed result plus one tensor being quantized. `on_tensor` is called
/// after each tensor is read (for progress; the checks that need no tensor come first).
/// Returns `(quantized tensors, bytes written)`.
pub fn write_quantized(
    ck: &Checkpoint,
    out: &Path,
    dtype: DType,
    quantize: &dyn Fn(&str) -> bool,
    on_tensor: &dyn Fn(),
) -> Result<(usize, u64)> {
    if !dtype.is_quantized() {
        return Err(Error::input(format!(
            "{} is not a packed format: expected q8 or q4",
            dtype.name()
        )));
    }
    if let Some(q) = ck.stored_quant() {
        return Err(Error::input(format!(
            "{} is already quantized as {}",
            ck.dir().display(),
            q.name()
        )));
    }
    // Refused before anything is created: an output folder that resolves to the model folder
    // (or inside it) would replace the files being read.
    crate::output::check_out_dir(out, ck.dir())?;
    // From the headers alone, before any tensor is read: a copy would only be a slower copy.
    let packable = |name: &str| {
        quantize(name) && matches!(ck.info(name), Ok((&[_, cols], _)) if dtype.check_cols(cols).is_ok())
    };
    if !ck.names().any(packable) {
        return Err(nothing_to_pack(ck, dtype, quantize));
    }
    let inputs = [ck.dir()];
    let mut tensors: Vec<TensorBytes> = Vec::new();
    let mut quantized = 0;
    for name in ck.names() {
        let (bytes, dt, shape) = ck.raw(name)?;
        on_tensor();
        if let [rows, cols] = *shape {
            if quantize(name) && dtype.check_cols(cols).is_ok() {
                let values = ck.load_f32(name, shape)?;
                // A block scale past f16's range would be packed as Inf.
                let largest = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                if dtype.max_magnitude().is_some_and(|limit| largest > limit) {
                    return Err(Error::input(format!(
                        "tensor {name} holds {largest:e}, more than {} can store (its block scales are f16); leave this checkpoint unquantized",
                        dtype.name()
                    )));
                }
                let words = crate::gpu::format::encode(dtype, &values, cols);
                let packed = bytemuck::cast_slice(&words).to_vec();
                tensors.push((
                    format!("{name}.{}", dtype.name()),
                    Dtype::U32,
                    vec![rows, dtype.row_words(cols)],
                    packed.into(),
                ));
                quantized += 1;
                continue;
            }
        }
        if matches!(dt, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            // Copied unchanged, but a NaN or Inf is refused here as it would be at load.
            ck.load_f32(name, shape)?;
        }
        tensors.push((name.to_string(), dt, shape.to_vec(), bytes.into()));
    }
    // Only now, with every tensor read and checked, is anything created.
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    for entry in std::fs::read_dir(ck.dir()).map_err(|e| Error::file(ck.dir(), e))? {
        let path = entry.map_err(|e| Error::file(ck.dir(), e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        // Everything but the weights (config, tokenizer) is copied; the packed
        // model.safetensors replaces safetensors and PyTorch files alike.
        let weights = name.ends_with(".safetensors")
            || (name.starts_with("pytorch_model") && name.ends_with(".bin"))
            || name == INDEX
            || name == TORCH_INDEX;
        if path.is_file() && !weights {
            crate::output::copy_file(&path, &out.join(&name), &inputs)?;
        }
    }
    let path = out.join(SINGLE);
    // Informational only (loads find the packed tensors by their `.q8`/`.q4` names): a tool
    // listing the header sees how the file was packed.
    let meta = BTreeMap::from([("quantization".to_string(), dtype.name().to_string())]);
    let written = save_safetensors(&path, &tensors, Some(&meta), &inputs)?;
    Ok((quantized, written))
}

/// Why [`write_quantized`] packed no matrix (a copy would only be a slower copy): no
/// language-model matrices, or none with rows of whole blocks of 32.
fn nothing_to_pack(ck: &Checkpoint, dtype: DType, quantize: &dyn Fn(&str) -> bool) -> Error {
    let mut widths = std::collections::BTreeSet::new();
    for name in ck.names().filter(|n| quantize(n)) {
        if let Ok((&[_, cols], _)) = ck.info(name) {
            widths.insert(cols);
        }
    }
    let why = if widths.is_empty() {
        "it has no language-model matrices (packing is for Llama, Phi-3 and Florence-VL; \
         Florence-2 weights load as f32 or f16)"
            .to_string()
    } else {
        let widths: Vec<String> = widths.iter().map(usize::to_string).collect();
        format!(
            "its language-model matrices have rows of {} values, and {} packs whole blocks of 32",
            widths.join(", "),
            dtype.name()
        )
    };
    Error::input(format!(
        "{}: nothing to pack as {}: {why}",
        ck.dir().display(),
        dtype.name()
    ))
}

/// One tensor to write: name, dtype, shape and its little-endian bytes.
pub type TensorBytes<'a> = (String, Dtype, Vec<usize>, std::borrow::Cow<'a, [u8]>);

/// Writes `tensors` (in this order) as the safetensors file `path`, through
/// [`crate::output::write_file`] (temporary file and rename; `inputs` are never replaced).
/// Returns the bytes written.
pub fn save_safetensors(
    path: &Path,
    tensors: &[TensorBytes],
    metadata: Option<&BTreeMap<String, String>>,
    inputs: &[&Path],
) -> Result<u64> {
    let mut header = serde_json::Map::new();
    if let Some(meta) = metadata {
        header.insert("__metadata__".into(), serde_json::json!(meta));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        let expected = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        if bytes.len() != expected {
            return Err(Error::shape(format!(
                "{name}: {} bytes for shape {shape:?} of {dtype:?}, expected {expected}",
                bytes.len()
            )));
        }
        let dt = serde_json::to_value(dtype).map_err(|e| Error::file(path, e))?;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    // The data section starts 8-byte aligned, as the format's own writer pads it.
    head.resize(head.len().next_multiple_of(8), b' ');
    crate::output::write_file(path, inputs, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        for (_, _, _, bytes) in tensors {
            w.write_all(bytes)?;
        }
        Ok(())
    })
}
