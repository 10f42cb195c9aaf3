//! Pager counters: monotonic atomics updated on the read path, read by the server and
//! the benchmarks through [`PagerStatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the read-latency histogram: bucket `i` holds reads of
/// `[2^(i/4), 2^((i+1)/4))` microseconds, so a percentile is known to within 19%.
const LATENCY_BUCKETS: usize = 128;

/// Counters the server publishes; all monotonic.
#[derive(Debug)]
pub struct PagerStats {
    /// Demanded experts that were in the cache.
    pub hits: AtomicU64,
    /// Demanded experts that had to be waited for (a new read, or one already in flight).
    pub misses: AtomicU64,
    /// Demanded experts that a prefetch had brought in (or was bringing in).
    pub prefetch_hits: AtomicU64,
    /// Prefetch reads started.
    pub prefetch_reads: AtomicU64,
    /// Bytes of prefetched experts evicted or dropped before any use.
    pub prefetch_wasted_bytes: AtomicU64,
    /// Prefetches cancelled before their read started.
    pub prefetch_cancelled: AtomicU64,
    /// Bytes read from disk.
    pub bytes_read: AtomicU64,
    /// Reads completed.
    pub reads: AtomicU64,
    /// Total time spent in reads, in microseconds.
    pub read_micros: AtomicU64,
    /// Total time callers waited for experts that were not ready, in microseconds.
    pub wait_micros: AtomicU64,
    /// Experts evicted.
    pub evictions: AtomicU64,
    /// Reads that failed (an I/O error, a record short of its length, a checksum mismatch).
    pub read_errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for PagerStats {
    fn default() -> Self {
        PagerStats {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            prefetch_hits: AtomicU64::new(0),
            prefetch_reads: AtomicU64::new(0),
            prefetch_wasted_bytes: AtomicU64::new(0),
            prefetch_cancelled: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_micros: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    // 4·log2(µs), computed on floats: reads are milliseconds, this is not a hot path
    (((micros.max(1) as f64).log2() * 4.0) as usize).min(LATENCY_BUCKETS - 1)
}

fn bucket_upper(i: usize) -> u64 {
    2f64.powf((i + 1) as f64 / 4.0).ceil() as u64
}

impl PagerStats {
    /// Records one completed read of `bytes` that took `micros`.
    pub(crate) fn record_read(&self, bytes: u64, micros: u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.read_micros.fetch_add(micros, Ordering::Relaxed);
        self.latency[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Ordering::Relaxed);
    }

    /// The current counters and read-latency percentiles.
    pub fn snapshot(&self) -> PagerStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hist: Vec<u64> = self.latency.iter().map(get).collect();
        let total: u64 = hist.iter().sum();
        let pct = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let want = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, &c) in hist.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return bucket_upper(i);
                }
            }
            bucket_upper(LATENCY_BUCKETS - 1)
        };
        PagerStatsSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            prefetch_hits: get(&self.prefetch_hits),
            prefetch_reads: get(&self.prefetch_reads),
            prefetch_wasted_bytes: get(&self.prefetch_wasted_bytes),
            prefetch_cancelled: get(&self.prefetch_cancelled),
            bytes_read: get(&self.bytes_read),
            reads: get(&self.reads),
            read_micros: get(&self.read_micros),
            wait_micros: get(&self.wait_micros),
            evictions: get(&self.evictions),
            read_errors: get(&self.read_errors),
            read_p50_micros: pct(0.50),
            read_p90_micros: pct(0.90),
            read_p99_micros: pct(0.99),
        }
    }
}

/// A snapshot of [`PagerStats`]. Percentiles are upper bounds of quarter-octave buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagerStatsSnapshot {
    /// Demanded experts found in the cache.
    pub hits: u64,
    /// Demanded experts that had to be waited for.
    pub misses: u64,
    /// Demanded experts brought in by a prefetch.
    pub prefetch_hits: u64,
    /// Prefetch reads started.
    pub prefetch_reads: u64,
    /// Bytes of prefetched experts dropped unused.
    pub prefetch_wasted_bytes: u64,
    /// Prefetches cancelled before their read started.
    pub prefetch_cancelled: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Reads completed.
    pub reads: u64,
    /// Time spent in reads (µs, summed over reader threads).
    pub read_micros: u64,
    /// Time callers waited for experts (µs).
    pub wait_micros: u64,
    /// Experts evicted.
    pub evictions: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Median read latency (µs).
    pub read_p50_micros: u64,
    /// 90th percentile read latency (µs).
    pub read_p90_micros: u64,
    /// 99th percentile read latency (µs).
    pub read_p99_micros: u64,
}

impl PagerStatsSnapshot {
    /// Fraction of demanded experts found in the cache (0 when nothing was demanded).
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_bound_the_recorded_latencies() {
        let s = PagerStats::default();
        for us in 1..=1000u64 {
            s.record_read(10, us);
        }
        let snap = s.snapshot();
        assert_eq!(snap.reads, 1000);
        assert_eq!(snap.bytes_read, 10_000);
        // the true p50 is 500 µs, p99 990 µs; buckets are within a factor 2^(1/4)
        assert!((500..=596).contains(&snap.read_p50_micros), "{}", snap.read_p50_micros);
        assert!((990..=1178).contains(&snap.read_p99_micros), "{}", snap.read_p99_micros);
        assert!(snap.read_p50_micros <= snap.read_p90_micros && snap.read_p90_micros <= snap.read_p99_micros);
        assert_eq!(PagerStats::default().snapshot().read_p99_micros, 0);
    }
}
