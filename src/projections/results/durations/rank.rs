//! Nearest-rank percentiles across several sorted blocks, without merging them.

/// Nearest-rank percentile of sorted values.
pub fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    sorted[rank_index(sorted.len(), p)]
}

/// The 0-based index of the nearest rank of `p` among `n` values: ceil(p·n) − 1, computed in
/// integers so that 0.95 × 20 is exactly 19.
pub fn rank_index(n: usize, p: f64) -> usize {
    let percent = (p * 100.0).round() as usize;
    ((percent * n).div_ceil(100)).clamp(1, n) - 1
}

/// The value at 0-based rank `r` of the union of `blocks`, each sorted ascending, or `None`
/// when they hold `r` values or fewer.
///
/// A bisection over values: the answer is the least `v` with more than `r` values ≤ `v`, and
/// counting those is a binary search per block, so the cost is about
/// 64 × blocks × log(block length) comparisons whatever the total length.
pub fn select_sorted(blocks: &[&[i64]], r: usize) -> Option<i64> {
    let total: usize = blocks.iter().map(|b| b.len()).sum();
    if r >= total {
        return None;
    }
    let mut lo = blocks.iter().filter_map(|b| b.first()).copied().min()?;
    let mut hi = blocks.iter().filter_map(|b| b.last()).copied().max()?;
    while lo < hi {
        // In i128: the midpoint of any two i64s without overflow.
        let mid = ((i128::from(lo) + i128::from(hi)).div_euclid(2)) as i64;
        let at_most: usize = blocks
            .iter()
            .map(|b| b.partition_point(|&v| v <= mid))
            .sum();
        if at_most > r {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_hand_computed_values() {
        let v: Vec<i64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(nearest_rank(&v, 0.50), 50);
        assert_eq!(nearest_rank(&v, 0.95), 100);
        assert_eq!(nearest_rank(&v, 0.10), 10);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
        let v: Vec<i64> = (1..=200).collect();
        assert_eq!(nearest_rank(&v, 0.99), 198);
        assert_eq!(nearest_rank(&v, 0.95), 190);
        assert_eq!(rank_index(20, 0.95), 18, "ceil(19) - 1, no float drift");
    }

    #[test]
    fn selection_across_sorted_blocks_by_hand() {
        let a = [1, 5, 9];
        let b = [2, 5, 5, 10];
        let blocks: [&[i64]; 3] = [&a, &[], &b];
        let all = [1, 2, 5, 5, 5, 9, 10];
        for (r, want) in all.iter().enumerate() {
            assert_eq!(select_sorted(&blocks, r), Some(*want), "rank {r}");
        }
        assert_eq!(select_sorted(&blocks, 7), None);
        assert_eq!(select_sorted(&[], 0), None);
        let extremes: [&[i64]; 2] = [&[i64::MIN, 0], &[i64::MAX]];
        assert_eq!(select_sorted(&extremes, 0), Some(i64::MIN));
        assert_eq!(select_sorted(&extremes, 2), Some(i64::MAX));
    }
}
