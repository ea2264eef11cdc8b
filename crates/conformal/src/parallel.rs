//! Explicit, scoped data parallelism over rows (std threads only).

use std::ops::Range;

use crate::error::Result;

/// Splits `0..rows` into `threads` contiguous ranges and runs `work` on each,
/// returning the results in row order. `threads ≤ 1` runs inline.
pub(crate) fn map_ranges<T: Send>(
    rows: usize,
    threads: usize,
    work: impl Fn(Range<usize>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = threads.clamp(1, rows.max(1));
    if threads == 1 {
        return Ok(vec![work(0..rows)?]);
    }
    let chunk = rows.div_ceil(threads);
    let ranges: Vec<Range<usize>> = (0..threads)
        .map(|t| (t * chunk).min(rows)..((t + 1) * chunk).min(rows))
        .collect();
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|range| scope.spawn(move || work(range)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(result) => result,
                // A panic in `work` is a bug in this crate; re-raise it.
                Err(payload) => std::panic::resume_unwind(payload),
            })
            .collect()
    })
}
