//! PyTorch checkpoints as `torch.save` writes them (PyTorch ≥ 1.6): a zip archive holding
//! `<archive>/data.pkl`, a pickled state dict, and one `<archive>/data/<key>` entry per storage,
//! stored uncompressed. [`parse`] finds every tensor's byte range inside the file, so a
//! memory-mapped file is read in place.
//!
//! The pickle is never executed. A small interpreter accepts only the opcodes and globals
//! `torch.save` writes for a state dict (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`, the `torch.*Storage`
//! types inside persistent ids) and refuses anything else by name. Every object it builds
//! comes from at least one opcode byte and every string's length is checked against the bytes
//! left, so memory stays proportional to the pickle's size; nothing recurses.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Seek, Write};
use std::ops::Range;
use std::path::Path;

use safetensors::Dtype;

/// One tensor of a torch checkpoint: stored dtype, shape and the byte range of its
/// row-major data in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    /// Element type of its storage.
    pub dtype: Dtype,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// First byte in the file.
    pub start: usize,
    /// One past the last byte in the file.
    pub end: usize,
}

/// Parses the bytes of a `torch.save` file (a whole `pytorch_model.bin`) into its tensors,
/// sorted by name. Errors are one line without the file name (the caller adds it). Never
/// panics, whatever the bytes; this is the fuzzing entry point for the torch format.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, TorchTensor>, String> {
    let archive = Archive::open(bytes)?;
    let pickle = archive.entry(bytes, "data.pkl")?;
    let mut vm = Vm::new(&bytes[pickle]);
    let top = vm.run()?;
    vm.state_dict(top)?
        .into_iter()
        .map(|(name, t)| {
            let view = vm.view(t)?;
            let tensor = archive.tensor(bytes, name, &view)?;
            Ok((name.to_string(), tensor))
        })
        .collect()
}

/// One tensor to write: name, dtype, shape and its row-major little-endian bytes.
pub type TensorToWrite<'t> = (&'t str, Dtype, &'t [usize], &'t [u8]);

/// Writes `tensors` as `torch.save(state_dict)` lays them out (archive `archive`, one stored
/// and 64-byte aligned storage per tensor, little-endian), through a temporary file renamed
/// to `path`. For benchmarks and tests: it writes what [`parse`] reads, nothing more.
pub fn write(path: &Path, tensors: &[TensorToWrite]) -> Result<(), String> {
    let tmp = path.with_extension("bin.partial");
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", tmp.display());
    let file = std::fs::File::create(&tmp).map_err(|e| fail(&e))?;
    let mut pickle = vec![0x80, 2];
    global(&mut pickle, "collections", "OrderedDict");
    pickle.extend(b")R(");
    for (i, &(name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        let numel: usize = shape.iter().product();
        if numel * (dtype.bitsize() / 8) != bytes.len() {
            return Err(format!(
                "tensor {name}: {} bytes for shape {shape:?} {dtype:?}",
                bytes.len()
            ));
        }
        let storage = STORAGES
            .iter()
            .find(|(_, d)| *d == dtype)
            .ok_or_else(|| format!("tensor {name}: torch has no storage for {dtype:?}"))?
            .0;
        text(&mut pickle, name);
        global(&mut pickle, "torch._utils", "_rebuild_tensor_v2");
        pickle.extend(b"((");
        text(&mut pickle, "storage");
        global(&mut pickle, "torch", storage);
        text(&mut pickle, &i.to_string());
        text(&mut pickle, "cpu");
        int(&mut pickle, numel);
        pickle.extend(b"tQ");
        int(&mut pickle, 0);
        let mut strides = vec![1usize; shape.len()];
        for d in (1..shape.len()).rev() {
            strides[d - 1] = strides[d] * shape[d];
        }
        for dims in [shape, &strides[..]] {
            pickle.push(b'(');
            dims.iter().for_each(|&d| int(&mut pickle, d));
            pickle.push(b't');
        }
        pickle.push(0x89); // requires_grad = False
        global(&mut pickle, "collections", "OrderedDict");
        pickle.extend(b")RtR"); // empty backward hooks; the argument tuple; rebuild
    }
    pickle.extend(b"u."); // SETITEMS, STOP
    let storages = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("data/{i}"), t.3));
    archive(file, &pickle, storages).map_err(|e| fail(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `pickle` as `archive/data.pkl` of a torch.save-style zip with the given storages
/// (`data/<key>`, bytes): for tests and fuzzing of the pickle reader behind [`parse`].
pub fn archive_bytes(pickle: &[u8], storages: &[(&str, &[u8])]) -> Result<Vec<u8>, String> {
    let storages = storages.iter().map(|&(key, b)| (format!("data/{key}"), b));
    archive(Cursor::new(Vec::new()), pickle, storages)
        .map(Cursor::into_inner)
        .map_err(|e| e.to_string())
}

/// A zip as torch.save writes it: `archive/data.pkl`, `archive/byteorder`, the storages
/// (`rel` name, bytes), `archive/version`; every entry stored and aligned to 64 bytes.
fn archive<'b, W: Write + Seek>(
    w: W,
    pickle: &'b [u8],
    storages: impl Iterator<Item = (String, &'b [u8])>,
) -> zip::result::ZipResult<W> {
    let mut zip = zip::ZipWriter::new(w);
    let entries = [
        ("data.pkl".to_string(), pickle),
        ("byteorder".to_string(), &b"little"[..]),
    ]
    .into_iter()
    .chain(storages)
    .chain([("version".to_string(), &b"3\n"[..])]);
    for (rel, bytes) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(bytes.len() as u64 >= u32::MAX as u64);
        zip.start_file(format!("archive/{rel}"), options)?;
        zip.write_all(bytes)?;
    }
    zip.finish()
}

/// Pickle GLOBAL `module.name`.
fn global(p: &mut Vec<u8>, module: &str, name: &str) {
    p.push(b'c');
    p.extend(format!("{module}\n{name}\n").bytes());
}

/// Pickle BINUNICODE.
fn text(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.bytes());
}

/// Pickle LONG1 of 8 bytes: any size or count.
fn int(p: &mut Vec<u8>, v: usize) {
    p.extend([0x8a, 8]);
    p.extend((v as u64).to_le_bytes());
}

/// The zip container: where each stored entry's bytes are.
struct Archive {
    /// The folder every entry sits in (`archive`, or the file's stem for older torch).
    prefix: String,
    /// Entry name → its bytes in the file, or `Err(method)` for a compressed entry.
    entries: HashMap<String, Result<Range<usize>, String>>,
}

impl Archive {
    fn open(bytes: &[u8]) -> Result<Archive, String> {
        if !bytes.starts_with(b"PK\x03\x04") {
            return Err(if bytes.first() == Some(&0x80) {
                "a PyTorch checkpoint in the legacy format (saved before PyTorch 1.6, or with \
                 _use_new_zipfile_serialization=False); re-save it with a newer torch.save or \
                 convert it to safetensors"
                    .into()
            } else {
                format!(
                    "not a PyTorch checkpoint: torch.save writes a zip archive (starting with \
                     \"PK\"), this file starts with {:02x?}",
                    &bytes[..bytes.len().min(4)]
                )
            });
        }
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| format!("not a complete zip archive (truncated or corrupt): {e}"))?;
        let mut entries = HashMap::new();
        for i in 0..zip.len() {
            let f = zip
                .by_index_raw(i)
                .map_err(|e| format!("corrupt zip entry #{i}: {e}"))?;
            let name = f.name().to_string();
            let range = match (f.compression(), f.encrypted(), f.data_start()) {
                (zip::CompressionMethod::Stored, false, Some(start)) => {
                    let len = f.compressed_size();
                    let end = start.checked_add(len).filter(|&e| e <= bytes.len() as u64);
                    let end = end.ok_or_else(|| {
                        format!(
                            "zip entry {name} runs to byte {} but the file has {} bytes \
                             (truncated file)",
                            start.saturating_add(len),
                            bytes.len()
                        )
                    })?;
                    Ok(start as usize..end as usize)
                }
                (_, true, _) => Err("encrypted".to_string()),
                (method, ..) => Err(format!("compressed ({})", method_name(method))),
            };
            entries.insert(name, range);
        }
        let mut pickles: Vec<&str> = entries
            .keys()
            .filter_map(|n| n.strip_suffix("/data.pkl"))
            .filter(|p| !p.contains('/'))
            .collect();
        pickles.sort_unstable();
        let prefix = match pickles[..] {
            [p] => p.to_string(),
            [] => {
                return Err("zip archive has no <archive>/data.pkl: not a torch.save file".into())
            }
            _ => {
                return Err(format!(
                    "zip archive holds several pickles ({}/data.pkl); torch.save writes one",
                    pickles.join("/data.pkl, ")
                ))
            }
        };
        let archive = Archive { prefix, entries };
        if archive.entries.contains_key(&archive.name("constants.pkl")) {
            return Err(
                "a TorchScript archive (torch.jit.save), not a state dict saved with torch.save"
                    .into(),
            );
        }
        if archive.entries.contains_key(&archive.name("byteorder")) {
            let order = archive.entry(bytes, "byteorder")?;
            match &bytes[order] {
                b"little" => {}
                b"big" => {
                    return Err("stores big-endian tensors (byteorder \"big\"); only \
                                little-endian checkpoints are read — re-save it on a \
                                little-endian machine"
                        .into())
                }
                other => {
                    return Err(format!(
                        "unknown byteorder {:?}; expected \"little\"",
                        String::from_utf8_lossy(&other[..other.len().min(16)])
                    ))
                }
            }
        }
        // Without a byteorder entry (PyTorch < 1.10) torch.load assumes little-endian.
        Ok(archive)
    }

    fn name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// Byte range of the stored entry `<archive>/<rel>`.
    fn entry(&self, bytes: &[u8], rel: &str) -> Result<Range<usize>, String> {
        let name = self.name(rel);
        match self.entries.get(&name) {
            Some(Ok(r)) if r.end <= bytes.len() => Ok(r.clone()),
            Some(Ok(_)) => Err(format!("zip entry {name} runs past the end of the file")),
            Some(Err(how)) => Err(format!(
                "zip entry {name} is {how}; torch.save stores entries uncompressed, so this \
                 file was repacked — re-save it with torch.save"
            )),
            None => Err(format!("zip archive has no entry {name}")),
        }
    }

    /// Resolves a pickled tensor to its bytes: storage entry, dtype, contiguity, bounds.
    fn tensor(&self, bytes: &[u8], name: &str, t: &View) -> Result<TorchTensor, String> {
        let dtype = storage_dtype(t.storage_type).ok_or_else(|| {
            format!(
                "tensor {name}: storage type torch.{} is not supported (float32, float16, \
                     bfloat16, float64, integer and bool storages are)",
                t.storage_type
            )
        })?;
        let data = self
            .entry(bytes, &format!("data/{}", t.key))
            .map_err(|e| format!("tensor {name}: {e}"))?;
        let dims = |v: &[i64], what: &str| -> Result<Vec<usize>, String> {
            v.iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<_, _>>()
                .map_err(|_| format!("tensor {name}: negative {what} {v:?}"))
        };
        let shape = dims(&t.size, "size")?;
        let strides = dims(&t.stride, "stride")?;
        if strides.len() != shape.len() {
            return Err(format!(
                "tensor {name}: {} sizes but {} strides",
                shape.len(),
                strides.len()
            ));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        // Row-major contiguity; a dimension of size 1 may carry any stride (torch's own rule).
        let mut expected = 1usize;
        for (&d, &s) in shape.iter().zip(&strides).rev() {
            if d != 1 && s != expected && numel != 0 {
                return Err(format!(
                    "tensor {name} is a non-contiguous view (shape {shape:?}, strides \
                     {strides:?}); only contiguous tensors are read — save it after .contiguous()"
                ));
            }
            expected = expected.saturating_mul(d);
        }
        let offset = usize::try_from(t.offset)
            .map_err(|_| format!("tensor {name}: negative storage offset {}", t.offset))?;
        let size = dtype.bitsize() / 8; // every dtype read here is whole bytes
        let have = data.len() / size;
        let range = offset
            .checked_add(numel)
            .filter(|&end| end <= have)
            .map(|end| data.start + offset * size..data.start + end * size);
        range
            .map(|r| TorchTensor {
                dtype,
                shape,
                start: r.start,
                end: r.end,
            })
            .ok_or_else(|| {
                format!(
                    "tensor {name} (shape {:?}, {dtype:?}) needs elements {offset}..{} of \
                     storage {}, which holds {have} elements ({} bytes)",
                    t.size,
                    offset as u128 + numel as u128,
                    self.name(&format!("data/{}", t.key)),
                    data.len()
                )
            })
    }
}

/// A zip compression method in words (the crate only names those it was built with).
fn method_name(method: zip::CompressionMethod) -> &'static str {
    use zip::CompressionMethod as M;
    [
        (M::DEFLATE, "deflate"),
        (M::DEFLATE64, "deflate64"),
        (M::BZIP2, "bzip2"),
        (M::LZMA, "lzma"),
        (M::ZSTD, "zstd"),
        (M::XZ, "xz"),
    ]
    .into_iter()
    .find(|(m, _)| *m == method)
    .map_or("an unknown zip method", |(_, name)| name)
}

/// The `torch.<Name>Storage` classes read here and their element types.
const STORAGES: [(&str, Dtype); 10] = [
    ("FloatStorage", Dtype::F32),
    ("HalfStorage", Dtype::F16),
    ("BFloat16Storage", Dtype::BF16),
    ("DoubleStorage", Dtype::F64),
    ("LongStorage", Dtype::I64),
    ("IntStorage", Dtype::I32),
    ("ShortStorage", Dtype::I16),
    ("CharStorage", Dtype::I8),
    ("ByteStorage", Dtype::U8),
    ("BoolStorage", Dtype::BOOL),
];

/// Element type of a `torch.<Name>Storage`, `None` for one we do not read.
fn storage_dtype(storage_type: &str) -> Option<Dtype> {
    STORAGES
        .iter()
        .find(|(name, _)| *name == storage_type)
        .map(|&(_, dtype)| dtype)
}

/// A tensor as the pickle rebuilds it: arena indices of its storage and of its size and
/// stride tuples (type-checked already), so rebuilding copies nothing.
#[derive(Clone, Copy)]
struct Rebuilt {
    storage: usize,
    offset: i64,
    size: usize,
    stride: usize,
}

/// A state-dict tensor read out of the arena, to be checked against the archive.
struct View<'v> {
    storage_type: &'v str,
    key: &'v str,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// Most dimensions a tensor may have (real checkpoints stay far below).
const MAX_DIMS: usize = 16;
/// Longest storage key or tensor name accepted (torch writes short ones).
const MAX_NAME: usize = 4096;

/// A pickle value: scalars inline, everything else an index into the object arena, so
/// copies from the memo are cheap and mutations are shared as in Python.
#[derive(Clone, Copy)]
enum Val {
    None,
    Bool,
    Int(i64),
    Obj(usize),
}

/// The callables and classes a state dict may name.
#[derive(Clone)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// `torch.<name>`, a storage class; only meaningful inside a persistent id.
    Storage(String),
}

enum Obj {
    Str(String),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    /// `dict` and `OrderedDict` alike (insertion order is not needed).
    Dict(Vec<(Val, Val)>),
    Global(Global),
    /// A persistent id `('storage', torch.<type>, key, location, numel)`: arena indices of
    /// the storage class and of the key string.
    Storage {
        class: usize,
        key: usize,
    },
    Tensor(Rebuilt),
}

/// The restricted unpickler.
struct Vm<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    objs: Vec<Obj>,
}

impl<'a> Vm<'a> {
    fn new(code: &'a [u8]) -> Self {
        Vm {
            code,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objs: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let code = self.code;
        let out = code
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or_else(|| {
                format!(
                    "data.pkl ends inside an opcode at byte {} (truncated pickle)",
                    self.pos
                )
            })?;
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    /// A string of `len` bytes (checked against what is left before anything is allocated).
    fn text(&mut self, len: u64) -> Result<String, String> {
        let len = usize::try_from(len).map_err(|_| "string length overflows".to_string())?;
        let at = self.pos;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| format!("data.pkl: string at byte {at} is not UTF-8"))
    }

    /// `module\nname\n` of the GLOBAL opcode.
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.code[self.pos.min(self.code.len())..];
        let n = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("data.pkl: unterminated global name at byte {}", self.pos))?;
        let s = self.text(n as u64)?;
        self.pos += 1;
        Ok(s)
    }

    fn alloc(&mut self, o: Obj) -> Val {
        self.objs.push(o);
        Val::Obj(self.objs.len() - 1)
    }

    fn pop(&mut self) -> Result<Val, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!(
                "data.pkl: stack underflow at byte {} (corrupt pickle)",
                self.pos
            ));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    /// Everything pushed since the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Val>, String> {
        let m = self.marks.pop().ok_or_else(|| {
            format!(
                "data.pkl: no MARK before byte {} (corrupt pickle)",
                self.pos
            )
        })?;
        Ok(self.stack.split_off(m))
    }

    fn obj(&self, v: Val) -> Option<&Obj> {
        match v {
            Val::Obj(i) => self.objs.get(i),
            _ => None,
        }
    }

    fn str_of(&self, v: Val) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The arena index of `v` when it is a tuple of at most [`MAX_DIMS`] ints.
    fn dims(&self, v: Val, what: &str) -> Result<usize, String> {
        match (v, self.obj(v)) {
            (Val::Obj(i), Some(Obj::Tuple(items))) => {
                if items.len() > MAX_DIMS {
                    return Err(format!(
                        "data.pkl: {what} has {} dimensions, more than {MAX_DIMS}",
                        items.len()
                    ));
                }
                match items.iter().find(|x| !matches!(x, Val::Int(_))) {
                    Some(&other) => Err(format!("data.pkl: {what} holds a {}", self.kind(other))),
                    None => Ok(i),
                }
            }
            _ => Err(format!(
                "data.pkl: {what} is a {}, not a tuple",
                self.kind(v)
            )),
        }
    }

    fn ints(&self, i: usize) -> Vec<i64> {
        match self.objs.get(i) {
            Some(Obj::Tuple(items)) => items
                .iter()
                .filter_map(|x| match x {
                    Val::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Reads a rebuilt tensor's storage, key, size and stride out of the arena.
    fn view(&self, t: Rebuilt) -> Result<View<'_>, String> {
        let Some(Obj::Storage { class, key }) = self.objs.get(t.storage) else {
            return Err("data.pkl: tensor without a storage".into());
        };
        let (Some(Obj::Global(Global::Storage(storage_type))), Some(Obj::Str(key))) =
            (self.objs.get(*class), self.objs.get(*key))
        else {
            return Err("data.pkl: malformed storage".into());
        };
        Ok(View {
            storage_type,
            key,
            offset: t.offset,
            size: self.ints(t.size),
            stride: self.ints(t.stride),
        })
    }

    fn kind(&self, v: Val) -> &'static str {
        match v {
            Val::None => "None",
            Val::Bool => "bool",
            Val::Int(_) => "int",
            Val::Obj(i) => match self.objs.get(i) {
                Some(Obj::Str(_)) => "string",
                Some(Obj::Tuple(_)) => "tuple",
                Some(Obj::List(_)) => "list",
                Some(Obj::Dict(_)) => "dict",
                Some(Obj::Global(_)) => "class or function",
                Some(Obj::Storage { .. }) => "storage",
                Some(Obj::Tensor(_)) => "tensor",
                None => "?",
            },
        }
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let top = *self.stack.last().ok_or_else(|| {
            format!(
                "data.pkl: memo store on an empty stack at byte {}",
                self.pos
            )
        })?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let v = *self
            .memo
            .get(&key)
            .ok_or_else(|| format!("data.pkl: memo entry {key} read before it is stored"))?;
        self.stack.push(v);
        Ok(())
    }

    /// Looks a global up in the whitelist; anything else is refused by name.
    fn global(&mut self, module: &str, name: &str) -> Result<Val, String> {
        if module.len() + name.len() > 200 {
            return Err("data.pkl names an over-long global; refused".into());
        }
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", n) if n.ends_with("Storage") && !n.contains('.') => {
                Global::Storage(n.to_string())
            }
            _ => {
                return Err(format!(
                    "data.pkl names the global {module}.{name}, which a state dict never needs \
                     (unpickling it could run code); refused — only tensors, their storages \
                     and OrderedDict are read"
                ))
            }
        };
        Ok(self.alloc(Obj::Global(g)))
    }

    /// Runs the pickle to its STOP and returns the top-level value.
    fn run(&mut self) -> Result<Val, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("data.pkl: unknown pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'N' => self.stack.push(Val::None),
                0x88 => self.stack.push(Val::Bool),
                0x89 => self.stack.push(Val::Bool),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Val::Int(v.into()))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Val::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Val::Int(v.into()))
                }
                0x8a => {
                    // LONG1: little-endian two's complement; sizes past i64 are refused.
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(format!(
                            "data.pkl: integer of {n} bytes at byte {at} is too large"
                        ));
                    }
                    let raw = self.take(n)?;
                    let mut buf = if raw.last().is_some_and(|&b| b & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(raw);
                    self.stack.push(Val::Int(i64::from_le_bytes(buf)))
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?);
                    let s = self.text(n.into())?;
                    let v = self.alloc(Obj::Str(s));
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()?;
                    let s = self.text(n.into())?;
                    let v = self.alloc(Obj::Str(s));
                    self.stack.push(v)
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    self.stack.push(v)
                }
                b't' | 0x85 | 0x86 | 0x87 => {
                    let items = match op {
                        b't' => self.pop_mark()?,
                        _ => {
                            let n = (op - 0x84) as usize;
                            let mut items =
                                (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                            items.reverse();
                            items
                        }
                    };
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v)
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    self.stack.push(v)
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()));
                    self.stack.push(v)
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    match self.stack.last().copied().and_then(|v| match v {
                        Val::Obj(i) => self.objs.get_mut(i),
                        _ => None,
                    }) {
                        Some(Obj::List(list)) => list.extend(items),
                        _ => return Err(format!("data.pkl: append to a non-list at byte {at}")),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(format!("data.pkl: odd number of dict items at byte {at}"));
                    }
                    match self.stack.last().copied().and_then(|v| match v {
                        Val::Obj(i) => self.objs.get_mut(i),
                        _ => None,
                    }) {
                        Some(Obj::Dict(d)) => {
                            d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])))
                        }
                        _ => return Err(format!("data.pkl: set item on a non-dict at byte {at}")),
                    }
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(&module, &name)?;
                    self.stack.push(v)
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(format!(
                            "data.pkl: STACK_GLOBAL without two strings at byte {at}"
                        ));
                    };
                    let (m, n) = (m.to_string(), n.to_string());
                    let v = self.global(&m, &n)?;
                    self.stack.push(v)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v)
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD on an OrderedDict sets attributes (the state dict's `_metadata`),
                    // which loading tensors does not need.
                    self.pop()?;
                    let top = self.stack.last().copied().unwrap_or(Val::None);
                    if !matches!(self.obj(top), Some(Obj::Dict(_))) {
                        return Err(format!(
                            "data.pkl: sets the state of a {} at byte {at}; only OrderedDict \
                             state is accepted",
                            self.kind(top)
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "data.pkl: pickle opcode {} at byte {at} is not one torch.save writes \
                         for a state dict; refused",
                        opcode_name(op)
                    ))
                }
            }
        }
    }

    /// `('storage', torch.<type>Storage, key, location, numel)` → a storage object.
    fn persistent_load(&mut self, pid: Val) -> Result<Val, String> {
        let bad =
            || "data.pkl: persistent id is not ('storage', type, key, location, size)".to_string();
        let Some(Obj::Tuple(items)) = self.obj(pid) else {
            return Err(bad());
        };
        let &[tag, ty, key, location, Val::Int(_)] = &items[..] else {
            return Err(bad());
        };
        if self.str_of(tag) != Some("storage") || self.str_of(location).is_none() {
            return Err(bad());
        }
        let (Val::Obj(class), Val::Obj(key_at)) = (ty, key) else {
            return Err(bad());
        };
        if !matches!(self.obj(ty), Some(Obj::Global(Global::Storage(_)))) {
            return Err(bad());
        }
        match self.str_of(key) {
            Some(k) if k.len() <= MAX_NAME => {}
            _ => return Err(bad()),
        }
        Ok(self.alloc(Obj::Storage { class, key: key_at }))
    }

    fn reduce(&mut self, func: Val, args: Val) -> Result<Val, String> {
        let Some(Obj::Global(g)) = self.obj(func) else {
            return Err(format!(
                "data.pkl calls a {}, not a function",
                self.kind(func)
            ));
        };
        let g = g.clone();
        let Some(Obj::Tuple(args)) = self.obj(args) else {
            return Err("data.pkl calls a function with arguments that are not a tuple".into());
        };
        // At most seven arguments are ever valid; the check keeps the copy small.
        let args: Vec<Val> = args.iter().take(8).copied().collect();
        match (&g, &args[..]) {
            (Global::OrderedDict, []) => Ok(self.alloc(Obj::Dict(Vec::new()))),
            (
                Global::RebuildTensorV2,
                [storage @ Val::Obj(at), Val::Int(offset), size, stride, Val::Bool, hooks, rest @ ..],
            ) if rest.len() <= 1 => {
                if !matches!(self.obj(*storage), Some(Obj::Storage { .. })) {
                    return Err(format!(
                        "data.pkl rebuilds a tensor from a {}, not a storage",
                        self.kind(*storage)
                    ));
                }
                if !matches!(hooks, Val::None) && !matches!(self.obj(*hooks), Some(Obj::Dict(_))) {
                    return Err("data.pkl rebuilds a tensor with hooks that are not a dict".into());
                }
                let t = Rebuilt {
                    storage: *at,
                    offset: *offset,
                    size: self.dims(*size, "tensor size")?,
                    stride: self.dims(*stride, "tensor stride")?,
                };
                Ok(self.alloc(Obj::Tensor(t)))
            }
            (Global::RebuildParameter, [data, Val::Bool, _hooks])
                if matches!(self.obj(*data), Some(Obj::Tensor(_))) =>
            {
                Ok(*data)
            }
            (g, args) => Err(format!(
                "data.pkl calls {} with {} argument(s), which torch.save does not write for \
                 a state dict; refused",
                match g {
                    Global::OrderedDict => "collections.OrderedDict".to_string(),
                    Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".to_string(),
                    Global::RebuildParameter => "torch._utils._rebuild_parameter".to_string(),
                    Global::Storage(s) => format!("torch.{s}"),
                },
                args.len()
            )),
        }
    }

    /// The top-level value as a state dict: names → tensors. A name given twice keeps its
    /// last tensor, as in Python.
    fn state_dict(&self, top: Val) -> Result<BTreeMap<&str, Rebuilt>, String> {
        let Some(Obj::Dict(items)) = self.obj(top) else {
            return Err(format!(
                "data.pkl holds a {}, not a state dict (a dict of tensors)",
                self.kind(top)
            ));
        };
        let mut out = BTreeMap::new();
        for &(k, v) in items {
            let name = match self.str_of(k) {
                Some(n) if n.len() <= MAX_NAME => n,
                Some(n) => return Err(format!("state dict name of {} bytes is too long", n.len())),
                None => return Err(format!("state dict key is a {}, not a name", self.kind(k))),
            };
            match self.obj(v) {
                Some(Obj::Tensor(t)) => out.insert(name, *t),
                _ => {
                    return Err(format!(
                        "state dict entry {name} is a {}, not a tensor",
                        self.kind(v)
                    ))
                }
            };
        }
        Ok(out)
    }
}

/// An opcode for messages: its pickle name where it has one.
fn opcode_name(op: u8) -> String {
    const NAMES: &[(u8, &str)] = &[
        (b'i', "INST"),
        (b'o', "OBJ"),
        (0x81, "NEWOBJ"),
        (0x92, "NEWOBJ_EX"),
        (b'P', "PERSID"),
        (0x82, "EXT1"),
        (0x83, "EXT2"),
        (0x84, "EXT4"),
        (b'G', "BINFLOAT"),
        (b'F', "FLOAT"),
        (b'I', "INT"),
        (b'L', "LONG"),
        (0x8b, "LONG4"),
        (b'S', "STRING"),
        (b'T', "BINSTRING"),
        (b'U', "SHORT_BINSTRING"),
        (b'B', "BINBYTES"),
        (b'C', "SHORT_BINBYTES"),
        (0x8e, "BINBYTES8"),
        (0x8d, "BINUNICODE8"),
        (0x96, "BYTEARRAY8"),
        (0x97, "NEXT_BUFFER"),
        (0x98, "READONLY_BUFFER"),
        (b'V', "UNICODE"),
        (b'p', "PUT"),
        (b'g', "GET"),
        (b'l', "LIST"),
        (b'd', "DICT"),
        (b'2', "DUP"),
        (0x8f, "EMPTY_SET"),
        (0x90, "ADDITEMS"),
        (0x91, "FROZENSET"),
    ];
    match NAMES.iter().find(|(b, _)| *b == op) {
        Some((_, name)) => format!("{name} (0x{op:02x})"),
        None => format!("0x{op:02x} (unknown)"),
    }
}
