//! DaViT's channel-group attention (`shaders/channel_attn.wgsl`): attention between the
//! channels of a group, over all tokens of the image, with the scale N^-½ (the token count).

use bytemuck::{Pod, Zeroable};

use super::reduce::segment_rows;
use super::{expect_f32, expect_shape, numel, shader, workgroups3};
use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Graph, Kernel, TensorId};

/// Largest channels per group: a softmax workgroup holds one thread per channel.
pub const MAX_GROUP_CHANNELS: usize = 64;
/// Threads a gram or apply workgroup aims for; each thread owns an 8×8 register tile.
const WG: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    c: u32,
    groups: u32,
    seg: u32,
    nseg: u32,
    scale: f32,
}

/// Channel-group attention on a fused projection `qkv` (f32 `[N, 3C]` or `[B, N, 3C]`,
/// columns `[q | k | v]`, each `groups` groups of `C/groups ≤ 64` channels): per batch item
/// and group, `A = softmax_j(Σ_n (q[n, i]·N^-½)·k[n, j])` and
/// `out[n, g·Cg + i] = Σ_j A[i, j]·v[n, g·Cg + j]`, into f32 `out` (`[N, C]` or `[B, N, C]`).
///
/// Three dispatches: partial `qᵀk` sums over token segments, their sum with the row softmax,
/// and the application to `v`; the intermediates are graph tensors.
pub fn channel_attention(
    g: &mut Graph,
    qkv: TensorId,
    n_tokens: usize,
    groups: usize,
    out: TensorId,
) -> Result<()> {
    let op = "channel_attention";
    expect_f32(g, op, "qkv", qkv)?;
    expect_f32(g, op, "out", out)?;
    let s = g.shape(qkv).to_vec();
    let dims_ok = (2..=3).contains(&s.len()) && s[s.len() - 2] == n_tokens && n_tokens > 0;
    let c3 = s[s.len() - 1];
    if !dims_ok || !c3.is_multiple_of(3) {
        return Err(Error::shape(format!(
            "{op}: qkv has shape {s:?}, expected [{n_tokens}, 3C] or [B, {n_tokens}, 3C]"
        )));
    }
    let c = c3 / 3;
    if groups == 0 || !c.is_multiple_of(groups) || c / groups > MAX_GROUP_CHANNELS {
        return Err(Error::shape(format!(
            "{op}: {c} channels do not split into {groups} groups of at most {MAX_GROUP_CHANNELS}"
        )));
    }
    let cg = c / groups;
    let batch = if s.len() == 3 { s[0] } else { 1 };
    let mut os = s.clone();
    *os.last_mut().unwrap() = c;
    expect_shape(g, op, "out", out, &os)?;
    numel(g, op, qkv)?;

    let seg = segment_rows(n_tokens);
    let nseg = n_tokens.div_ceil(seg);
    let part = g.tensor(&[batch * groups * nseg, cg * cg], DType::F32)?;
    let attn = g.tensor(&[batch * groups, cg * cg], DType::F32)?;
    numel(g, op, part)?;
    let p = Params {
        n: n_tokens as u32,
        c: c as u32,
        groups: groups as u32,
        seg: seg as u32,
        nseg: nseg as u32,
        scale: (n_tokens as f32).powf(-0.5),
    };
    // 8×8 tiles along a group's channels, and per workgroup: gram segments side by side,
    // apply token tiles.
    let tg = cg.div_ceil(8);
    let tiles = tg * tg;
    let spw = (WG / tiles).max(1);
    let tt = (WG / tg).max(1);
    let base = [
        ("CG", cg as u32),
        ("VEC4", cg.is_multiple_of(4) as u32),
        ("TG", tg as u32),
    ];
    let (name, source) = shader!("channel_attn");
    let mut launch = |entry, consts: &[(&'static str, u32)], tensors, workgroups| {
        g.dispatch(
            Kernel::new((name, source), entry, &p, tensors, workgroups)
                .consts(&base.iter().chain(consts).copied().collect::<Vec<_>>()),
        )
    };
    launch(
        "gram",
        &[("TILES", tiles as u32), ("SPW", spw as u32)],
        vec![("qkv", qkv, Access::Read), ("part", part, Access::Write)],
        workgroups3(op, [nseg.div_ceil(spw), groups, batch])?,
    )?;
    launch(
        "softmax",
        &[],
        vec![("part", part, Access::Read), ("attn", attn, Access::Write)],
        workgroups3(op, [cg, groups, batch])?,
    )?;
    launch(
        "apply",
        &[("TT", tt as u32)],
        vec![
            ("qkv", qkv, Access::Read),
            ("attn", attn, Access::Read),
            ("out", out, Access::Write),
        ],
        workgroups3(op, [n_tokens.div_ceil(8 * tt), groups, batch])?,
    )
}
