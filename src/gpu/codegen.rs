//! Shader assembly: a kernel file from `shaders/` plus a generated header.
//!
//! The header holds compile-time constants, the binding declarations and, for every tensor a
//! kernel touches, accessors over one flat element index that hide dtype and chunking:
//! `ld_x(i) -> f32` / `ld4_x(i) -> vec4<f32>` (any float dtype, dequantizing on the fly;
//! `ld4` needs `i % 4 == 0` and rows a multiple of 4 long when it reads codes directly),
//! `ld8_x(i) -> mat2x4<f32>` (`i % 8 == 0`; one load for f16 rows a multiple of 8 long),
//! `ldw_x` / `ldw4_x` raw words of quantized tensors (`ldw4`: `i % 4 == 0`, one load where
//! rows are whole vec4s of words), `st_x(i, v)` for f32 outputs, `ldu_x`/`stu_x` for u32
//! tensors. On CPU drivers a load costs per instruction, not per byte (docs/perf.md), hence
//! the wide loads. A tensor in several chunks
//! gets one binding per chunk and a `switch` on the chunk index; a one-chunk tensor indexes
//! its array directly, so the common case costs nothing.
//!
//! Kernel files may use `#if NAME…` / `#else` / `#endif` lines on the defines: `SUBGROUP`
//! when the device has subgroups (a fast path beside its fallback), and the entry point's
//! own name, so one family file can hold entry points that use different tensors.

use std::fmt::Write;

use super::format::DType;
use super::tensor::Layout;

/// Whether a kernel reads or writes a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The kernel only reads the tensor.
    Read,
    /// The kernel writes the tensor (bound `read_write`).
    Write,
}

/// One tensor argument of a kernel, by the name its accessors use.
#[derive(Clone, Debug)]
pub struct TensorArg {
    /// Accessor suffix in WGSL: `ld_{name}`, `st_{name}`, ….
    pub name: &'static str,
    /// Shape, dtype and chunking of the tensor.
    pub layout: Layout,
    /// Whether the kernel reads or writes it.
    pub access: Access,
    /// Bind as `read` (only for tensors no other binding of the same dispatch can share a
    /// buffer with: wgpu forbids read and read-write views of one buffer in one dispatch, so
    /// arena-planned intermediates are always bound `read_write`).
    pub read_only_binding: bool,
}

/// Applies `#if A B…` (true when any name is defined) / `#else` / `#endif` lines, which may
/// nest. Removed lines become blank so naga's error positions still point into the file.
pub fn preprocess(src: &str, defines: &[&str]) -> String {
    let mut out = String::with_capacity(src.len());
    let mut stack: Vec<(bool, bool)> = Vec::new(); // (this branch taken, enclosing block live)
    let live = |stack: &[(bool, bool)]| stack.last().is_none_or(|&(taken, outer)| taken && outer);
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(names) = t.strip_prefix("#if ") {
            let outer = live(&stack);
            stack.push((
                names.split_whitespace().any(|n| defines.contains(&n)),
                outer,
            ));
        } else if t.starts_with("#else") {
            let top = stack.last_mut().expect("#else without #if in shader");
            top.0 = !top.0;
        } else if t.starts_with("#endif") {
            stack.pop().expect("#endif without #if in shader");
        } else if live(&stack) {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(stack.is_empty(), "unterminated #if in shader");
    out
}

/// Number of storage bindings the header declares for these tensors (plus params and run).
pub fn storage_bindings(tensors: &[TensorArg]) -> usize {
    2 + tensors.iter().map(|t| t.layout.num_chunks()).sum::<usize>()
}

fn vec4_ok(l: &Layout) -> bool {
    l.cols().is_multiple_of(4)
        && (l.num_chunks() == 1 || (l.rows_per_chunk * l.cols()).is_multiple_of(4))
}

/// f16 rows (and chunks) a multiple of 8 long: bound as `array<vec4<u32>>`, eight halves a
/// load.
fn halves8_ok(l: &Layout) -> bool {
    l.dtype == DType::F16
        && l.cols().is_multiple_of(8)
        && (l.num_chunks() == 1 || (l.rows_per_chunk * l.cols()).is_multiple_of(8))
}

/// Quantized rows whose words come in whole vec4s (rows a multiple of 4 words, so chunks too):
/// such tensors bind as `array<vec4<u32>>` and `ldw4` reads a block's four q4 words (or half
/// a q8 block) with one load — on CPU drivers a load costs per instruction, not per word.
fn words4_ok(l: &Layout) -> bool {
    l.dtype.row_words(l.cols()).is_multiple_of(4)
}

/// The generated header: constants, bindings (`p: Params` at 0, `run` at 1, tensors from 2)
/// and accessors.
///
/// `p` is a read-only storage buffer, not a uniform one: Mesa's lavapipe (22.x, Debian 12's)
/// specializes a shader on the values of a uniform buffer that bound its loops, recompiling
/// at every bind and keeping every variant (~2 MB a vision pass on the fixtures, growing
/// without bound in a server). Read-only storage is uniform in WGSL's analysis too.
pub fn header(consts: &[(&str, u32)], tensors: &[TensorArg]) -> String {
    let mut h = String::new();
    for (name, v) in consts {
        writeln!(h, "const {name}: u32 = {v}u;").unwrap();
    }
    // f16 helpers for the accessors: halves j..j+3 (j % 4 == 0) of a vec4 holding eight.
    h.push_str("fn halves4(w: vec4<u32>, j: u32) -> vec4<f32> { let h = select(w.zw, w.xy, (j & 4u) == 0u); return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y)); }\n");
    h.push_str("@group(0) @binding(0) var<storage, read> p: Params;\n");
    h.push_str("@group(0) @binding(1) var<storage, read> run: array<u32>;\n");
    let mut binding = 2;
    for t in tensors {
        accessor(&mut h, t, binding);
        binding += t.layout.num_chunks();
    }
    h
}

/// Element type of the binding array and the expressions reading one element / four elements
/// (`{a}` = the array, `j` = element index within the chunk).
struct Storage {
    array: &'static str,
    ld: String,
    ld4: Option<String>,
}

fn storage(t: &TensorArg) -> Storage {
    let l = &t.layout;
    let v4 = vec4_ok(l);
    match l.dtype {
        DType::F32 if v4 => Storage {
            array: "vec4<f32>",
            ld: "{a}[j >> 2u][j & 3u]".into(),
            ld4: Some("{a}[j >> 2u]".into()),
        },
        DType::F32 => Storage {
            array: "f32",
            ld: "{a}[j]".into(),
            ld4: None,
        },
        DType::U32 => Storage {
            array: "u32",
            ld: "f32({a}[j])".into(),
            ld4: None,
        },
        // Eight halves a vec4 where rows (and chunks) allow: `ld8` then takes one load.
        DType::F16 if halves8_ok(l) => Storage {
            array: "vec4<u32>",
            ld: "unpack2x16float({a}[j >> 3u][(j >> 1u) & 3u])[j & 1u]".into(),
            ld4: Some("halves4({a}[j >> 3u], j)".into()),
        },
        DType::F16 if v4 => Storage {
            array: "vec2<u32>",
            ld: "unpack2x16float({a}[j >> 2u][(j >> 1u) & 1u])[j & 1u]".into(),
            ld4: Some(
                "vec4<f32>(unpack2x16float({a}[j >> 2u].x), unpack2x16float({a}[j >> 2u].y))"
                    .into(),
            ),
        },
        DType::F16 => Storage {
            array: "u32",
            ld: "unpack2x16float({a}[j >> 1u])[j & 1u]".into(),
            ld4: None,
        },
        DType::Q8 | DType::Q4 => {
            let n = t.name.to_uppercase();
            let w4 = words4_ok(l);
            // The word at index w of the chunk, in either array type.
            let at = |w: String| {
                if w4 {
                    format!("{{a}}[({w}) >> 2u][({w}) & 3u]")
                } else {
                    format!("{{a}}[{w}]")
                }
            };
            let array = if w4 { "vec4<u32>" } else { "u32" };
            // j → row r, column c within the chunk; the block scale sits after the row's codes.
            let scale = format!(
                "unpack2x16float({})[((j % {n}_COLS) / 32u) & 1u]",
                at(format!(
                    "(j / {n}_COLS) * {n}_RW + {n}_QW + (j % {n}_COLS) / 64u"
                ))
            );
            if l.dtype == DType::Q8 {
                let word = at(format!("(j / {n}_COLS) * {n}_RW + (j % {n}_COLS) / 4u"));
                Storage {
                    array,
                    ld: format!("f32(unpack4xI8({word})[j & 3u]) * {scale}"),
                    ld4: Some(format!("vec4<f32>(unpack4xI8({word})) * {scale}")),
                }
            } else {
                let word = at(format!("(j / {n}_COLS) * {n}_RW + (j % {n}_COLS) / 8u"));
                Storage {
                    array,
                    ld: format!("(f32(({word} >> (4u * (j & 7u))) & 15u) - 8.0) * {scale}"),
                    ld4: Some(format!(
                        "(vec4<f32>((vec4<u32>({word}) >> (vec4<u32>(0u, 4u, 8u, 12u) + 4u * (j & 4u))) & vec4<u32>(15u)) - vec4<f32>(8.0)) * {scale}"
                    )),
                }
            }
        }
    }
}

fn accessor(h: &mut String, t: &TensorArg, first_binding: usize) {
    let l = &t.layout;
    let name = t.name;
    let upper = name.to_uppercase();
    let chunks = l.num_chunks();
    let s = storage(t);
    let mode = if t.read_only_binding {
        "read"
    } else {
        "read_write"
    };
    for c in 0..chunks {
        writeln!(
            h,
            "@group(0) @binding({}) var<storage, {mode}> {name}_{c}: array<{}>;",
            first_binding + c,
            s.array
        )
        .unwrap();
    }
    if l.dtype.is_quantized() {
        let rw = l.dtype.row_words(l.cols());
        let qw = rw - (l.cols() / 32).div_ceil(2);
        writeln!(h, "const {upper}_COLS: u32 = {}u;\nconst {upper}_RW: u32 = {rw}u;\nconst {upper}_QW: u32 = {qw}u;", l.cols()).unwrap();
    }
    if chunks > 1 {
        writeln!(
            h,
            "const {upper}_CE: u32 = {}u;",
            l.rows_per_chunk * l.cols()
        )
        .unwrap();
    }
    let per_chunk = format!("{upper}_CE");
    let emit =
        |h: &mut String, fname: String, args: &str, ret: &str, body: &dyn Fn(&str) -> String| {
            emit_chunked(h, name, chunks, &per_chunk, &fname, args, ret, body)
        };
    if l.dtype.is_quantized() {
        // Raw words (codes and scales) by global word index, for kernels that decode whole blocks.
        writeln!(
            h,
            "const {upper}_CW: u32 = {}u;",
            l.rows_per_chunk * l.dtype.row_words(l.cols())
        )
        .unwrap();
        let w4 = words4_ok(l);
        emit_chunked(
            h,
            name,
            chunks,
            &format!("{upper}_CW"),
            &format!("ldw_{name}"),
            "i: u32",
            "u32",
            &|a| {
                if w4 {
                    format!("return {a}[j >> 2u][j & 3u];")
                } else {
                    format!("return {a}[j];")
                }
            },
        );
        // Four words from a multiple of 4 (one load where the rows allow it).
        if w4 {
            emit_chunked(
                h,
                name,
                chunks,
                &format!("{upper}_CW"),
                &format!("ldw4_{name}"),
                "i: u32",
                "vec4<u32>",
                &|a| format!("return {a}[j >> 2u];"),
            );
        } else {
            writeln!(h, "fn ldw4_{name}(i: u32) -> vec4<u32> {{ return vec4<u32>(ldw_{name}(i), ldw_{name}(i + 1u), ldw_{name}(i + 2u), ldw_{name}(i + 3u)); }}").unwrap();
        }
    }
    let ld = s.ld.clone();
    match (l.dtype, t.access) {
        (DType::U32, access) => {
            emit(h, format!("ldu_{name}"), "i: u32", "u32", &|a| {
                format!("return {a}[j];")
            });
            if access == Access::Write {
                emit(h, format!("stu_{name}"), "i: u32, v: u32", "", &|a| {
                    format!("{a}[j] = v;")
                });
            }
        }
        _ => {
            emit(h, format!("ld_{name}"), "i: u32", "f32", &|a| {
                format!("return {};", ld.replace("{a}", a))
            });
            match &s.ld4 {
                Some(ld4) => emit(h, format!("ld4_{name}"), "i: u32", "vec4<f32>", &|a| format!("return {};", ld4.replace("{a}", a))),
                None => writeln!(h, "fn ld4_{name}(i: u32) -> vec4<f32> {{ return vec4<f32>(ld_{name}(i), ld_{name}(i + 1u), ld_{name}(i + 2u), ld_{name}(i + 3u)); }}").unwrap(),
            }
            // Eight values from i % 8 == 0, as two vec4 columns: one load for f16 in vec4s.
            if halves8_ok(l) {
                emit(h, format!("ld8_{name}"), "i: u32", "mat2x4<f32>", &|a| {
                    format!(
                        "let w = {a}[j >> 3u]; return mat2x4<f32>(halves4(w, 0u), halves4(w, 4u));"
                    )
                });
            } else {
                writeln!(h, "fn ld8_{name}(i: u32) -> mat2x4<f32> {{ return mat2x4<f32>(ld4_{name}(i), ld4_{name}(i + 4u)); }}").unwrap();
            }
            if t.access == Access::Write {
                if s.ld4.is_some() {
                    emit(h, format!("st_{name}"), "i: u32, v: f32", "", &|a| {
                        format!("{a}[j >> 2u][j & 3u] = v;")
                    });
                    emit(h, format!("st4_{name}"), "i: u32, v: vec4<f32>", "", &|a| {
                        format!("{a}[j >> 2u] = v;")
                    });
                } else {
                    emit(h, format!("st_{name}"), "i: u32, v: f32", "", &|a| {
                        format!("{a}[j] = v;")
                    });
                    writeln!(h, "fn st4_{name}(i: u32, v: vec4<f32>) {{ st_{name}(i, v.x); st_{name}(i + 1u, v.y); st_{name}(i + 2u, v.z); st_{name}(i + 3u, v.w); }}").unwrap();
                }
            }
        }
    }
}

/// Emits `fn FNAME(ARGS) -> RET` whose body sees `j`, the index `i` made local to its chunk,
/// and `{a}`, that chunk's array; with several chunks it switches on `i / PER_CHUNK`.
#[allow(clippy::too_many_arguments)]
fn emit_chunked(
    h: &mut String,
    name: &str,
    chunks: usize,
    per_chunk: &str,
    fname: &str,
    args: &str,
    ret: &str,
    body: &dyn Fn(&str) -> String,
) {
    let sig = if ret.is_empty() {
        format!("fn {fname}({args})")
    } else {
        format!("fn {fname}({args}) -> {ret}")
    };
    if chunks == 1 {
        writeln!(h, "{sig} {{ let j = i; {} }}", body(&format!("{name}_0"))).unwrap();
        return;
    }
    writeln!(
        h,
        "{sig} {{\n  let c = i / {per_chunk}; let j = i - c * {per_chunk};\n  switch c {{"
    )
    .unwrap();
    for c in 0..chunks {
        let label = if c + 1 == chunks {
            "default".to_string()
        } else {
            format!("case {c}u")
        };
        writeln!(h, "    {label}: {{ {} }}", body(&format!("{name}_{c}"))).unwrap();
    }
    writeln!(h, "  }}\n}}").unwrap();
}
