//! Space-filling point sets: the initial design (an optimised Latin hypercube from egobox-doe)
//! and quasi-random acquisition candidates (a randomly shifted Halton sequence).

use egobox_doe::{Lhs, LhsKind, SamplingMethod};
use ndarray::Array2;
use rand::{Rng, RngCore, rngs::StdRng};
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng as _;

/// `count` points of `[0,1]^dimension` forming a Latin hypercube (one point per stratum of every
/// axis), spread out by egobox-doe's maximin ESE optimisation.
pub fn latin_hypercube(count: usize, dimension: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    if count == 0 || dimension == 0 {
        return vec![Vec::new(); count];
    }
    let mut limits = Array2::<f64>::zeros((dimension, 2));
    limits.column_mut(1).fill(1.0);
    // egobox-doe draws from its own rand generation; seeding it from ours keeps one seed in charge.
    let seeded = Xoshiro256Plus::seed_from_u64(rng.next_u64());
    // The ESE optimiser needs pairs of points to compare; below three it has nothing to gain.
    let kind = if count < 3 {
        LhsKind::Classic
    } else {
        LhsKind::Optimized
    };
    let sample = Lhs::new_with_rng(&limits, seeded).kind(kind).sample(count);
    sample
        .rows()
        .into_iter()
        .map(|row| row.iter().map(|v| v.clamp(0.0, 1.0)).collect())
        .collect()
}

/// `count` low-discrepancy points of `[0,1]^dimension`: the Halton sequence (radical inverses
/// in the first `dimension` prime bases, so every one-dimensional projection is evenly filled),
/// shifted modulo 1 by a random offset so that each ask looks at a different but equally even
/// set (a Cranley–Patterson rotation).
pub fn halton(count: usize, dimension: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    let bases = primes(dimension);
    let shift: Vec<f64> = (0..dimension).map(|_| rng.random_range(0.0..1.0)).collect();
    (1..=count)
        .map(|i| {
            bases
                .iter()
                .zip(&shift)
                .map(|(&base, s)| (s + radical_inverse(i as u64, base)).fract())
                .collect()
        })
        .collect()
}

/// The digits of `index` in `base`, mirrored behind the radix point.
fn radical_inverse(mut index: u64, base: u64) -> f64 {
    let (mut value, mut scale) = (0.0, 1.0 / base as f64);
    while index > 0 {
        value += (index % base) as f64 * scale;
        index /= base;
        scale /= base as f64;
    }
    value
}

/// The first `count` primes.
fn primes(count: usize) -> Vec<u64> {
    let mut found: Vec<u64> = Vec::with_capacity(count);
    let mut candidate = 2;
    while found.len() < count {
        if found
            .iter()
            .take_while(|p| *p * *p <= candidate)
            .all(|p| candidate % p != 0)
        {
            found.push(candidate);
        }
        candidate += 1;
    }
    found
}
