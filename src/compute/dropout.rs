//! Dropout randomness: inverted-dropout masks drawn from a counter-based generator, so a
//! mask is a pure function of its key and position (reproducible, computed in parallel, and
//! drawn again in a backward instead of stored).

use rayon::prelude::*;

use super::PAR_MIN_ELEMS;

/// One inverted-dropout mask as drawn: the key of [`dropout_mask`]'s generator, the keep
/// probability and the scale of kept values. The mask itself is computed from these where it
/// is needed: whole ([`dropout_mask`]) or block by block (the training attention, which draws
/// it again in its backward).
#[derive(Clone, Copy, Debug)]
pub struct DropoutDraw {
    pub key: u64,
    pub keep: f64,
    pub scale: f32,
}

impl DropoutDraw {
    /// The mask of (sequence, head) pair `task`, into `out` (its probabilities' size).
    pub(crate) fn block_mask(self, task: usize, out: &mut [f32]) {
        dropout_mask_at(self, (task * out.len()) as u64, out);
    }
}

/// Inverted-dropout mask: each element `scale` with probability `keep`, else 0, drawn from a
/// counter-based generator (SplitMix64's mixer of `key + index`), so the mask is a pure
/// function of `(key, index)`: reproducible, and computed in parallel.
pub fn dropout_mask(draw: DropoutDraw, out: &mut [f32]) {
    let fill = |(i, chunk): (usize, &mut [f32])| {
        dropout_mask_at(draw, (i * (PAR_MIN_ELEMS / 4)) as u64, chunk)
    };
    if out.len() < PAR_MIN_ELEMS {
        out.chunks_mut(PAR_MIN_ELEMS / 4).enumerate().for_each(fill);
    } else {
        out.par_chunks_mut(PAR_MIN_ELEMS / 4)
            .enumerate()
            .for_each(fill);
    }
}

/// Elements `start..start + out.len()` of [`dropout_mask`]'s mask (the training attention
/// draws each head's block of the probabilities' mask this way).
pub fn dropout_mask_at(draw: DropoutDraw, start: u64, out: &mut [f32]) {
    // keep probability as a 24-bit threshold.
    let threshold = (draw.keep * (1u64 << 24) as f64).round() as u64;
    for (j, v) in out.iter_mut().enumerate() {
        let mut z = draw
            .key
            .wrapping_add((start + j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *v = if (z >> 40) < threshold {
            draw.scale
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_is_a_function_of_key_and_position() {
        let draw = DropoutDraw {
            key: 7,
            keep: 0.9,
            scale: 1.0 / 0.9,
        };
        let n = if cfg!(miri) { 3_000 } else { 100_000 };
        let mut whole = vec![0f32; n];
        dropout_mask(draw, &mut whole);
        // Any piece drawn alone is the same piece of the whole mask.
        for (start, len) in [(0, 10), (123, 77), (n - 5, 5)] {
            let mut piece = vec![0f32; len];
            dropout_mask_at(draw, start as u64, &mut piece);
            assert_eq!(piece, whole[start..start + len]);
        }
        assert!(whole.iter().all(|v| *v == 0.0 || *v == draw.scale));
        let kept = whole.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
        // Four standard deviations of a binomial share.
        let sd = (0.9 * 0.1 / n as f64).sqrt();
        assert!((kept - 0.9).abs() < 4.0 * sd, "kept {kept}");
        // Another key, another mask.
        let mut other = vec![0f32; n];
        dropout_mask(DropoutDraw { key: 8, ..draw }, &mut other);
        assert_ne!(other, whole);
    }
}
