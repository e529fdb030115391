//! How the products on prepared weights ([`super::packed`], [`super::int8`], [`super::bf16`])
//! split their work: over the output columns, a run of weight panels per thread (each thread
//! streams its own weights once per block of rows), and the epilogue on finished rows.

use rayon::prelude::*;

use super::packed::{Epilogue, PANEL};

/// Rows per block of a product on prepared weights whose activation rows take `row_bytes` each:
/// as many whole tiles of `mr` rows as fill at most half of each of `threads` threads' share of
/// the L2 (the fp32 product's rule, [`super::packed::Blocking::rule`]), so a block's activations
/// stay there while every weight panel of the thread's columns passes over them; at least one
/// tile. Under Miri (which cannot read sysfs) one tile, so small tests cross the block edges.
pub(crate) fn rows_per_block(row_bytes: usize, mr: usize, threads: usize) -> usize {
    if cfg!(miri) {
        return mr;
    }
    let budget = super::cache::CacheSizes::detect().l2_per_thread(threads) / 2;
    (budget / row_bytes.max(1) / mr * mr).max(mr)
}

/// The shapes of a product on prepared weights, checked before any kernel runs (the kernels'
/// raw-pointer code relies on them): activations of `rows` rows in `x_groups` blocks of `x_k`
/// inputs against a weight of `groups` blocks of `n x k`, into `out` (`rows x groups * n`),
/// with `groups * n` biases. Panics, naming what differs, otherwise. Returns whether there is
/// anything to compute.
pub(crate) fn check_product(
    rows: usize,
    (x_groups, x_k): (usize, usize),
    (groups, n, k): (usize, usize, usize),
    out: &super::view::MatMut,
    bias: Option<&[f32]>,
) -> bool {
    assert_eq!(
        (x_groups, x_k),
        (groups, k),
        "activations prepared as {x_groups} x {x_k} for a weight of {groups} x {k} inputs"
    );
    assert_eq!((out.rows(), out.cols()), (rows, groups * n), "output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), groups * n, "bias length");
    }
    rows > 0 && n > 0
}

/// Below this many multiply-adds a product runs on the calling thread: forking costs more.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Calls `run(g, p0, p1)` for every work item of a product over `groups` groups of `panels`
/// weight panels each, `np` panels per register tile kept together: group `g`'s panels
/// `p0..p1`. The items cover every panel of every group once, without overlap, split over up to
/// `threads` threads (one when the product has fewer than 2^17 multiply-adds: `macs`).
pub(crate) fn over_panels(
    groups: usize,
    panels: usize,
    np: usize,
    threads: usize,
    macs: usize,
    run: impl Fn(usize, usize, usize) + Sync,
) {
    let tiles = panels.div_ceil(np);
    let threads = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        threads.max(1)
    };
    let per_group = threads.div_ceil(groups).min(tiles).max(1);
    let item = |item: usize| {
        let (g, part) = (item / per_group, item % per_group);
        let chunk = tiles.div_ceil(per_group);
        let (t0, t1) = (part * chunk, ((part + 1) * chunk).min(tiles));
        if t0 < t1 {
            run(g, t0 * np, (t1 * np).min(panels));
        }
    };
    let items = groups * per_group;
    if threads == 1 {
        (0..items).for_each(item);
    } else {
        (0..items).into_par_iter().for_each(item);
    }
}

/// One register-tile block of a work item: rows `ic..ic + rows` of the panels from `p` that
/// hold output columns `col0..col0 + cols` (at most `np` panels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub ic: usize,
    pub rows: usize,
    pub p: usize,
    pub col0: usize,
    pub cols: usize,
}

/// A work item's blocks: for each block of up to `mc` of the `m` rows, `tile` for each run of
/// up to `np` of the panels `p0..p1` (of a group of `n` columns), then `act`, if any, on the
/// block's finished rows of the item's columns at `out` (row stride `ldc`) while they are
/// still in L2 (per tile, the calls would cost more than the work).
///
/// # Safety
/// `m > 0`, `p0 < p1 <= n.div_ceil(16)`; `out` must be valid for reads and writes of `m` rows
/// of the columns `p0 * 16 .. min(p1 * 16, n)` at `ldc`, accessed by no one else meanwhile, and
/// `tile` must have written a block's outputs when it returns.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn for_each_block(
    m: usize,
    mc: usize,
    n: usize,
    (p0, p1): (usize, usize),
    np: usize,
    act: Option<Epilogue>,
    (out, ldc): (*mut f32, usize),
    mut tile: impl FnMut(Block),
) {
    let mut ic = 0;
    while ic < m {
        let rows = mc.min(m - ic);
        let mut p = p0;
        while p < p1 {
            let nps = np.min(p1 - p);
            let col0 = p * PANEL;
            let cols = (nps * PANEL).min(n - col0);
            tile(Block {
                ic,
                rows,
                p,
                col0,
                cols,
            });
            p += nps;
        }
        if let Some(act) = act {
            let (c0, c1) = (p0 * PANEL, (p1 * PANEL).min(n));
            for r in ic..ic + rows {
                // SAFETY: row r, columns c0..c1 are this item's outputs (the caller's
                // guarantee), written by `tile` above.
                act(unsafe { std::slice::from_raw_parts_mut(out.add(r * ldc + c0), c1 - c0) });
            }
        }
        ic += rows;
    }
}

/// The body of a 512-bit kernel's block of rows: register tiles of 12 rows, then one of the
/// rest (1-11), each over two panels where the block has more than 16 columns
/// (`$tile::<R, 2>($t, r0)`) and one otherwise (`$tile::<R, 1>`). Expands inside the
/// kernel's own `unsafe fn`, whose contract the calls rely on: `$t` keeps its tile's
/// invariant, `$tile` needs rows `r0..r0 + R` of it and as many panels as it gets.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_of_tiles {
    ($t:ident, $tile:ident) => {{
        let two = $t.cols > PANEL;
        let mut r0 = 0;
        // SAFETY: each call gets rows r0..r0 + R < rows of `$t` (R whole tiles while 12 are
        // left, then exactly the rest) and two panels only where its columns span two (the
        // caller's contract covers the rest).
        unsafe {
            while $t.rows - r0 >= 12 {
                if two {
                    $tile::<12, 2>($t, r0)
                } else {
                    $tile::<12, 1>($t, r0)
                }
                r0 += 12;
            }
            match ($t.rows - r0, two) {
                (0, _) => {}
                (1, true) => $tile::<1, 2>($t, r0),
                (1, false) => $tile::<1, 1>($t, r0),
                (2, true) => $tile::<2, 2>($t, r0),
                (2, false) => $tile::<2, 1>($t, r0),
                (3, true) => $tile::<3, 2>($t, r0),
                (3, false) => $tile::<3, 1>($t, r0),
                (4, true) => $tile::<4, 2>($t, r0),
                (4, false) => $tile::<4, 1>($t, r0),
                (5, true) => $tile::<5, 2>($t, r0),
                (5, false) => $tile::<5, 1>($t, r0),
                (6, true) => $tile::<6, 2>($t, r0),
                (6, false) => $tile::<6, 1>($t, r0),
                (7, true) => $tile::<7, 2>($t, r0),
                (7, false) => $tile::<7, 1>($t, r0),
                (8, true) => $tile::<8, 2>($t, r0),
                (8, false) => $tile::<8, 1>($t, r0),
                (9, true) => $tile::<9, 2>($t, r0),
                (9, false) => $tile::<9, 1>($t, r0),
                (10, true) => $tile::<10, 2>($t, r0),
                (10, false) => $tile::<10, 1>($t, r0),
                (_, true) => $tile::<11, 2>($t, r0),
                (_, false) => $tile::<11, 1>($t, r0),
            }
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use rows_of_tiles;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Mismatched operands are refused before any kernel runs; empty ones compute nothing.
    #[test]
    fn products_check_their_operands() {
        use crate::compute::MatMut;
        let mut buf = vec![0f32; 6 * 8];
        assert!(check_product(
            6,
            (2, 5),
            (2, 4, 5),
            &MatMut::new(&mut buf, 6, 8, 8),
            None
        ));
        assert!(!check_product(
            0,
            (2, 5),
            (2, 4, 5),
            &MatMut::new(&mut [], 0, 8, 8),
            None
        ));
        let bad: [fn(); 3] = [
            || {
                _ = check_product(
                    6,
                    (1, 10),
                    (2, 4, 5),
                    &MatMut::new(&mut [0.0; 48], 6, 8, 8),
                    None,
                )
            },
            || {
                _ = check_product(
                    6,
                    (2, 5),
                    (2, 4, 5),
                    &MatMut::new(&mut [0.0; 42], 6, 7, 7),
                    None,
                )
            },
            || {
                _ = check_product(
                    6,
                    (2, 5),
                    (2, 4, 5),
                    &MatMut::new(&mut [0.0; 48], 6, 8, 8),
                    Some(&[0.0; 4]),
                )
            },
        ];
        for (i, f) in bad.into_iter().enumerate() {
            assert!(std::panic::catch_unwind(f).is_err(), "case {i} accepted");
        }
    }

    /// Every panel of every group exactly once, in runs of whole tiles (but the last), for
    /// every thread count, on one thread when the product is small.
    #[test]
    fn items_cover_every_panel_once() {
        for (groups, panels, np) in [(1, 1, 1), (1, 48, 2), (1, 7, 2), (4, 12, 1), (3, 5, 2)] {
            for threads in [1, 2, 3, 8] {
                let seen = Mutex::new(Vec::new());
                over_panels(groups, panels, np, threads, usize::MAX, |g, p0, p1| {
                    assert!(p0 < p1 && p1 <= panels && p0 % np == 0);
                    assert!(p1 == panels || (p1 - p0) % np == 0);
                    seen.lock().unwrap().extend((p0..p1).map(|p| (g, p)));
                });
                let mut seen = seen.into_inner().unwrap();
                seen.sort_unstable();
                let want: Vec<_> = (0..groups)
                    .flat_map(|g| (0..panels).map(move |p| (g, p)))
                    .collect();
                assert_eq!(seen, want, "{groups} {panels} {np} t{threads}");
            }
        }
        let items = Mutex::new(0);
        over_panels(1, 48, 2, 8, 10, |_, _, _| *items.lock().unwrap() += 1);
        assert_eq!(*items.lock().unwrap(), 1, "a small product is one item");
    }
}
