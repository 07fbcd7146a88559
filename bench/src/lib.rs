//! Benchmarks that measure Apiary and its baselines in the same run and
//! report ratios (see `BENCH.md` of the project notes and `bench/RESULTS.md`).

pub mod converge;
pub mod engine_api;
pub mod etcd_grpc;
pub mod failover;
pub mod lb;
pub mod overlay;
pub mod raft;
pub mod raft_group;
pub mod raftload;
pub mod scheduler;
pub mod stack;
pub mod swarmlab;
pub mod sync;
pub mod wrk;

/// The value after `name` in `args`, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and spread (max − min) of a set of measurements.
pub fn median_spread(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[v.len() - 1] - v[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_sets() {
        assert_eq!(median_spread(&[3.0, 1.0, 2.0]), (2.0, 2.0));
        assert_eq!(median_spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 3.0));
        assert_eq!(median_spread(&[]), (0.0, 0.0));
    }
}
