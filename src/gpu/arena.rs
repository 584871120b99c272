//! Arena planning: the graph's intermediates, each alive from its first to its last use, are
//! packed into as few buffers as possible so that peak memory is the largest live set, not
//! the sum of all intermediates. Pure arithmetic, no GPU: the graph executor allocates what
//! the plan says.

use crate::error::{Error, Result};

/// One allocation to place: `size` bytes alive from node `first` to node `last` (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Bytes (already rounded up to the offset alignment).
    pub size: u64,
    /// First node that uses it.
    pub first: usize,
    /// Last node that uses it.
    pub last: usize,
}

/// Where each allocation went, and how large each arena must be.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// `(arena, offset)` per allocation, in input order.
    pub placement: Vec<(usize, u64)>,
    /// Bytes of each arena.
    pub arena_sizes: Vec<u64>,
}

/// Greedy by size: each allocation, largest first, takes the lowest offset that is free over
/// its whole lifetime in the first arena where it fits under `max_arena` bytes.
pub fn plan(allocs: &[Lifetime], max_arena: u64) -> Result<Plan> {
    let mut order: Vec<usize> = (0..allocs.len()).collect();
    order.sort_by_key(|&a| std::cmp::Reverse(allocs[a].size));
    let mut placed: Vec<(usize, u64, usize)> = Vec::new(); // (alloc, offset, arena)
    let mut arena_sizes: Vec<u64> = Vec::new();
    let mut placement = vec![(0usize, 0u64); allocs.len()];
    for &a in &order {
        let al = allocs[a];
        let overlaps = |b: usize| allocs[b].first <= al.last && al.first <= allocs[b].last;
        let mut chosen = None;
        for arena in 0..=arena_sizes.len() {
            let mut busy: Vec<(u64, u64)> = placed
                .iter()
                .filter(|&&(b, _, ar)| ar == arena && overlaps(b))
                .map(|&(b, off, _)| (off, off + allocs[b].size))
                .collect();
            busy.sort();
            let mut offset = 0;
            for (lo, hi) in busy {
                if offset + al.size <= lo {
                    break;
                }
                offset = offset.max(hi);
            }
            if offset + al.size <= max_arena {
                chosen = Some((arena, offset));
                break;
            }
        }
        let (arena, offset) = chosen.ok_or_else(|| {
            Error::AdapterLimits(format!(
                "an intermediate of {} bytes is larger than the largest buffer the adapter allows ({max_arena} bytes)",
                al.size
            ))
        })?;
        if arena == arena_sizes.len() {
            arena_sizes.push(0);
        }
        arena_sizes[arena] = arena_sizes[arena].max(offset + al.size);
        placed.push((a, offset, arena));
        placement[a] = (arena, offset);
    }
    Ok(Plan {
        placement,
        arena_sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(size: u64, first: usize, last: usize) -> Lifetime {
        Lifetime { size, first, last }
    }

    /// No two allocations alive at the same node share bytes of the same arena, and every
    /// allocation lies inside its arena.
    fn assert_valid(allocs: &[Lifetime], p: &Plan, max_arena: u64) {
        for (i, a) in allocs.iter().enumerate() {
            let (ar, off) = p.placement[i];
            assert!(off + a.size <= p.arena_sizes[ar], "alloc {i} outside arena {ar}");
            assert!(p.arena_sizes[ar] <= max_arena);
            for (j, b) in allocs.iter().enumerate().skip(i + 1) {
                let (br, boff) = p.placement[j];
                let alive_together = a.first <= b.last && b.first <= a.last;
                let bytes_overlap = off < boff + b.size && boff < off + a.size;
                assert!(
                    !(ar == br && alive_together && bytes_overlap),
                    "allocs {i} and {j} overlap while both alive"
                );
            }
        }
    }

    #[test]
    fn disjoint_lifetimes_share_bytes() {
        // A chain x0 → x1 → x2: x0 is dead when x2 is made, so two slots of 100 suffice.
        let allocs = [life(100, 0, 1), life(100, 1, 2), life(100, 2, 3)];
        let p = plan(&allocs, 1 << 20).unwrap();
        assert_valid(&allocs, &p, 1 << 20);
        assert_eq!(p.arena_sizes, vec![200]);
    }

    #[test]
    fn live_set_bounds_the_arena() {
        // Pseudo-random sizes and lifetimes; the arena never exceeds the sum of everything
        // and the plan is always valid.
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let allocs: Vec<Lifetime> = (0..60)
            .map(|_| {
                let first = next() % 40;
                life(256 * (1 + next() % 13) as u64, first, first + next() % 9)
            })
            .collect();
        let p = plan(&allocs, 1 << 30).unwrap();
        assert_valid(&allocs, &p, 1 << 30);
        let total: u64 = allocs.iter().map(|a| a.size).sum();
        let peak_live = (0..50)
            .map(|n| allocs.iter().filter(|a| a.first <= n && n <= a.last).map(|a| a.size).sum::<u64>())
            .max()
            .unwrap();
        assert!(p.arena_sizes[0] >= peak_live && p.arena_sizes[0] < total);
    }

    #[test]
    fn a_full_arena_opens_another() {
        let allocs = [life(600, 0, 2), life(600, 1, 3)];
        let p = plan(&allocs, 1000).unwrap();
        assert_valid(&allocs, &p, 1000);
        assert_eq!(p.arena_sizes, vec![600, 600]);
    }

    #[test]
    fn an_allocation_over_the_limit_is_an_error() {
        let err = plan(&[life(2000, 0, 0)], 1000).unwrap_err().to_string();
        assert!(err.contains("2000 bytes"), "{err}");
    }
}
