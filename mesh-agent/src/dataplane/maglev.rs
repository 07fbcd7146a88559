//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4): each
//! backend walks the table in its own permutation and claims the next free
//! row in turn. Removing one of N backends moves about 1/N of the rows.

use mesh_common::MAGLEV_M;

fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // fmix64: spread the low bits FNV leaves weak.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Fills `table` (of `MAGLEV_M` rows) for backends identified by a stable
/// name (their address:port, so the table is the same whatever ids they
/// got). Row values are the ids.
pub fn populate(backends: &[(String, u32)], table: &mut [u32]) {
    let m = MAGLEV_M as u64;
    debug_assert_eq!(table.len(), MAGLEV_M as usize);
    if backends.is_empty() {
        table.fill(0);
        return;
    }
    let perm: Vec<(u64, u64)> = backends
        .iter()
        .map(|(name, _)| {
            let offset = fnv1a(0x5eed_0001, name.as_bytes()) % m;
            let skip = fnv1a(0x5eed_0002, name.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut filled = vec![false; MAGLEV_M as usize];
    let mut n = 0usize;
    'outer: loop {
        for (i, (offset, skip)) in perm.iter().enumerate() {
            let mut row = (offset + next[i] * skip) % m;
            while filled[row as usize] {
                next[i] += 1;
                row = (offset + next[i] * skip) % m;
            }
            filled[row as usize] = true;
            table[row as usize] = backends[i].1;
            next[i] += 1;
            n += 1;
            if n == MAGLEV_M as usize {
                break 'outer;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("10.0.0.{i}:80"), i as u32 + 1))
            .collect()
    }

    fn table(b: &[(String, u32)]) -> Vec<u32> {
        let mut t = vec![0; MAGLEV_M as usize];
        populate(b, &mut t);
        t
    }

    #[test]
    fn rows_are_spread_evenly() {
        let t = table(&names(3));
        for id in 1..=3 {
            let share = t.iter().filter(|&&x| x == id).count() as f64 / MAGLEV_M as f64;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.02,
                "backend {id} owns {share}"
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3usize, 5, 10] {
            let all = names(n);
            let before = table(&all);
            let after = table(&all[1..]);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64;
            let removed_share = before.iter().filter(|&&x| x == all[0].1).count() as f64;
            // Rows of the removed backend must move; the others mostly stay.
            let extra = (moved - removed_share) / MAGLEV_M as f64;
            assert!(extra < 0.05, "n={n}: {extra} of rows moved needlessly");
        }
    }

    #[test]
    fn table_does_not_depend_on_ids() {
        let a = names(4);
        let b: Vec<_> = a.iter().map(|(n, id)| (n.clone(), id + 100)).collect();
        let ta = table(&a);
        let tb = table(&b);
        assert!(ta.iter().zip(&tb).all(|(x, y)| x + 100 == *y));
    }
}
