//! A lock-free log-linear latency histogram.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sub-buckets per power of two, as a power of two: 2^4 = 16.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets covering every `u64` nanosecond value.
pub(crate) const BUCKETS: usize = ((64 - SUB_BITS as usize) << SUB_BITS) + SUB as usize;

/// The bucket holding `v` nanoseconds.
pub(crate) fn bucket_index(v: u64) -> usize {
    if v < SUB {
        v as usize
    } else {
        let high = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = high - SUB_BITS;
        let sub = ((v >> shift) & (SUB - 1)) as usize;
        (((shift + 1) as usize) << SUB_BITS) + sub
    }
}

/// The smallest and largest nanosecond values in bucket `i`.
pub(crate) fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < SUB as usize {
        (i as u64, i as u64)
    } else {
        let shift = (i >> SUB_BITS) as u32 - 1;
        let sub = (i as u64) & (SUB - 1);
        let lower = (SUB + sub) << shift;
        (lower, lower + ((1u64 << shift) - 1))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A lock-free latency histogram with bounded relative error.
///
/// Values are recorded in nanoseconds into log-linear buckets: values below
/// 16 ns are exact, and every power of two above is split into 16 equal
/// buckets, so a bucket's width is at most 1/16 of its lower bound. Every
/// `u64` nanosecond value (up to ~584 years) has a bucket; longer durations
/// saturate.
///
/// [`percentile`](Self::percentile) returns the largest value of the bucket
/// holding the requested rank, capped at the recorded maximum: it never
/// under-reports, and over-reports by less than 1/16 (6.25 %) of the true
/// value.
///
/// [`record`](Self::record) is two relaxed atomic additions and a load
/// (plus a rare `fetch_max` and carry) and never locks or allocates. Reads (`percentile`, `mean`, ...) load the
/// atomics one by one: while other threads record, a read sees a state that
/// may mix events from just before and just after it.
///
/// # Examples
///
/// ```
/// use qudag_metrics::Histogram;
/// use std::time::Duration;
///
/// let h = Histogram::new();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// assert_eq!(h.count(), 100);
/// assert_eq!(h.max(), Duration::from_millis(100));
/// let p50 = h.percentile(0.5);
/// assert!(p50 >= Duration::from_millis(50));
/// assert!(p50 <= Duration::from_millis(50) + Duration::from_millis(50) / 16);
/// ```
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    /// Low 64 bits of the sum of recorded nanoseconds.
    sum_lo: AtomicU64,
    /// Carries out of `sum_lo`.
    sum_hi: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// The bound on the relative error of [`percentile`](Self::percentile):
    /// 1/16.
    pub const RELATIVE_ERROR: f64 = 1.0 / SUB as f64;

    /// An empty histogram (allocates its ~7.8 KiB of buckets once).
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_lo: AtomicU64::new(0),
            sum_hi: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records every value of `values`: the same result as calling
    /// [`record`](Self::record) for each, with one update of the sum and the
    /// maximum for all of them, and one per run of values in the same bucket
    /// (the values of one acknowledged batch are close, so usually a few).
    pub fn record_many(&self, values: impl IntoIterator<Item = Duration>) {
        let mut sum: u128 = 0;
        let mut max = 0u64;
        let mut run: Option<(usize, u64)> = None;
        for value in values {
            let v = nanos(value);
            sum += u128::from(v);
            max = max.max(v);
            let i = bucket_index(v);
            run = match run {
                Some((j, n)) if j == i => Some((j, n + 1)),
                Some((j, n)) => {
                    self.buckets[j].fetch_add(n, Relaxed);
                    Some((i, 1))
                }
                None => Some((i, 1)),
            };
        }
        let Some((j, n)) = run else {
            return;
        };
        self.buckets[j].fetch_add(n, Relaxed);
        // The 128-bit sum is split like `record`'s: the low word wraps into
        // the high one.
        let lo = sum as u64;
        let mut hi = (sum >> 64) as u64;
        let prev = self.sum_lo.fetch_add(lo, Relaxed);
        if prev.checked_add(lo).is_none() {
            hi += 1;
        }
        if hi > 0 {
            self.sum_hi.fetch_add(hi, Relaxed);
        }
        if max > self.max.load(Relaxed) {
            self.max.fetch_max(max, Relaxed);
        }
    }

    /// Records one value.
    pub fn record(&self, value: Duration) {
        let v = nanos(value);
        self.buckets[bucket_index(v)].fetch_add(1, Relaxed);
        let prev = self.sum_lo.fetch_add(v, Relaxed);
        if prev.checked_add(v).is_none() {
            self.sum_hi.fetch_add(1, Relaxed);
        }
        if v > self.max.load(Relaxed) {
            self.max.fetch_max(v, Relaxed);
        }
    }

    /// How many values were recorded.
    ///
    /// Sums the buckets (there is no separate count to update on the
    /// recording path), so it costs about a microsecond.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The largest recorded value, or zero if none.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max.load(Relaxed))
    }

    /// The exact sum of recorded values, in nanoseconds.
    pub fn sum_nanos(&self) -> u128 {
        let hi = self.sum_hi.load(Relaxed);
        let lo = self.sum_lo.load(Relaxed);
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// The exact mean of recorded values (rounded down to the nanosecond),
    /// or zero if none.
    pub fn mean(&self) -> Duration {
        mean_of(self.sum_nanos(), self.count())
    }

    /// The value at quantile `q` (0.0 ..= 1.0; out-of-range and NaN are
    /// clamped into it), or zero if nothing was recorded.
    ///
    /// The rank is `ceil(q * n)` (at least 1) among the `n` recorded values
    /// sorted ascending. The result is at least the value of that rank and
    /// less than 17/16 of it.
    pub fn percentile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let max = self.max.load(Relaxed);
        Duration::from_nanos(percentile_of(&counts, max, q))
    }

    /// Count, mean, p50, p90, p99 and max, read in one pass.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let max = self.max.load(Relaxed);
        let at = |q| Duration::from_nanos(percentile_of(&counts, max, q));
        let count = counts.iter().sum();
        LatencySummary {
            count,
            mean: mean_of(self.sum_nanos(), count),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: Duration::from_nanos(max),
        }
    }

    /// The count in fine bucket `i` (for exporters).
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn bucket_count(&self, i: usize) -> u64 {
        self.buckets[i].load(Relaxed)
    }

    /// Non-empty buckets as `(largest value in the bucket, count)`, in
    /// ascending order.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.buckets.iter().enumerate().filter_map(|(i, b)| {
            let n = b.load(Relaxed);
            (n > 0).then(|| (Duration::from_nanos(bucket_bounds(i).1), n))
        })
    }
}

fn mean_of(sum: u128, count: u64) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(u64::try_from(sum / u128::from(count)).unwrap_or(u64::MAX))
}

/// The percentile over bucket `counts` (see [`Histogram::percentile`]).
fn percentile_of(counts: &[u64], max: u64, q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    // `as` saturates; `total` fits in f64 well enough for a rank.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_bounds(i).1.min(max);
        }
    }
    max
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("mean", &self.mean())
            .field("max", &self.max())
            .finish_non_exhaustive()
    }
}

/// Latency figures read from a [`Histogram`].
///
/// Percentiles follow [`Histogram::percentile`] (never under-reported,
/// less than 1/16 over); `mean` and `max` are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many values were recorded.
    pub count: u64,
    /// The exact mean.
    pub mean: Duration,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The exact maximum.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn empty_histogram_reads_zero() {
        let h = Histogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.percentile(0.5), Duration::ZERO);
        assert_eq!(h.mean(), Duration::ZERO);
        assert_eq!(h.max(), Duration::ZERO);
        assert_eq!(h.summary(), LatencySummary::default());
        assert_eq!(h.buckets().count(), 0);
    }

    #[test]
    fn small_values_are_exact() {
        let h = Histogram::new();
        for ns in 1..=10 {
            h.record(Duration::from_nanos(ns));
        }
        assert_eq!(h.percentile(0.5), Duration::from_nanos(5));
        assert_eq!(h.percentile(0.9), Duration::from_nanos(9));
        assert_eq!(h.percentile(0.0), Duration::from_nanos(1));
        assert_eq!(h.percentile(1.0), Duration::from_nanos(10));
        assert_eq!(h.mean(), Duration::from_nanos(5)); // 55 / 10, rounded down
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_ms() {
        let h = Histogram::new();
        // Record in reverse to show order does not matter.
        for n in (1..=100).rev() {
            h.record(ms(n));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(s.max, ms(100));
        for (got, want) in [(s.p50, 50), (s.p90, 90), (s.p99, 99)] {
            assert!(got >= ms(want), "{got:?} < {want} ms");
            assert!(
                got < ms(want) + ms(want) / 16,
                "{got:?} too far above {want} ms"
            );
        }
        // Bucket upper bounds: 50 ms lies in [48.2 ms, 51.4 ms).
        assert_eq!(
            s.p50,
            Duration::from_nanos(bucket_bounds(bucket_index(50_000_000)).1)
        );
        assert_eq!(h.percentile(1.0), ms(100));
    }

    #[test]
    fn percentile_is_capped_at_max_and_clamps_q() {
        let h = Histogram::new();
        h.record(ms(3));
        assert_eq!(h.percentile(0.99), ms(3));
        assert_eq!(h.percentile(7.0), ms(3));
        assert_eq!(h.percentile(-1.0), ms(3));
        assert_eq!(h.percentile(f64::NAN), ms(3));
    }

    #[test]
    fn huge_values_saturate_without_panicking() {
        let h = Histogram::new();
        h.record(Duration::MAX);
        h.record(Duration::MAX);
        assert_eq!(h.count(), 2);
        assert_eq!(h.max(), Duration::from_nanos(u64::MAX));
        assert_eq!(h.percentile(0.5), Duration::from_nanos(u64::MAX));
        // The sum carries into the high word instead of wrapping.
        assert_eq!(h.sum_nanos(), 2 * u128::from(u64::MAX));
        assert_eq!(h.mean(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = Histogram::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = &h;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(Duration::from_nanos(t * 10_000 + i));
                    }
                });
            }
        });
        assert_eq!(h.count(), 40_000);
        assert_eq!(h.buckets().map(|(_, n)| n).sum::<u64>(), 40_000);
        assert_eq!(h.max(), Duration::from_nanos(39_999));
        assert_eq!(h.sum_nanos(), (0..40_000u128).sum::<u128>());
    }

    #[test]
    fn bucket_table_is_contiguous() {
        assert_eq!(bucket_bounds(0), (0, 0));
        for i in 1..BUCKETS {
            assert_eq!(bucket_bounds(i).0, bucket_bounds(i - 1).1 + 1, "gap at {i}");
        }
        assert_eq!(bucket_bounds(BUCKETS - 1).1, u64::MAX);
    }

    proptest! {
        #[test]
        fn every_value_lies_in_its_bucket_and_error_is_bounded(v in any::<u64>()) {
            let i = bucket_index(v);
            prop_assert!(i < BUCKETS);
            let (lo, hi) = bucket_bounds(i);
            prop_assert!(lo <= v && v <= hi);
            prop_assert!(hi - lo <= lo / 16, "bucket [{lo}, {hi}] wider than 1/16");
        }

        #[test]
        fn percentile_is_within_the_error_bound(
            values in proptest::collection::vec(0u64..1u64 << 50, 1..200),
            q in 0.0f64..=1.0,
        ) {
            let h = Histogram::new();
            for &v in &values {
                h.record(Duration::from_nanos(v));
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let n = sorted.len() as u64;
            let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
            let exact = sorted[(rank - 1) as usize];
            let got = u64::try_from(h.percentile(q).as_nanos()).unwrap();
            prop_assert!(got >= exact, "{got} < exact {exact}");
            prop_assert!(got <= exact + exact / 16, "{got} above bound for {exact}");
            prop_assert_eq!(h.count(), n);
            prop_assert_eq!(h.max(), Duration::from_nanos(*sorted.last().unwrap()));
            prop_assert_eq!(h.sum_nanos(), values.iter().map(|&v| u128::from(v)).sum::<u128>());
        }

        /// `record_many` leaves exactly what one `record` per value leaves,
        /// in any order, over earlier contents, and across the 64-bit wrap
        /// of the sum's low word.
        #[test]
        fn record_many_equals_one_record_each(
            before in proptest::collection::vec(any::<u64>(), 0..20),
            values in proptest::collection::vec(prop_oneof![0u64..1_000_000, any::<u64>()], 0..100),
        ) {
            let (one, many) = (Histogram::new(), Histogram::new());
            for &v in &before {
                one.record(Duration::from_nanos(v));
                many.record(Duration::from_nanos(v));
            }
            for &v in &values {
                one.record(Duration::from_nanos(v));
            }
            many.record_many(values.iter().map(|&v| Duration::from_nanos(v)));
            prop_assert_eq!(one.sum_nanos(), many.sum_nanos());
            prop_assert_eq!(one.max(), many.max());
            prop_assert_eq!(one.count(), many.count());
            let b = |h: &Histogram| h.buckets.iter().map(|b| b.load(Relaxed)).collect::<Vec<_>>();
            prop_assert_eq!(b(&one), b(&many));
        }
    }
}
