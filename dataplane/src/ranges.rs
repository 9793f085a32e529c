//! Device address ranges as both sides check them: the client before it queues a copy (so a bad range fails at
//! the call), the server before anything reaches the driver. One rule, so the two never disagree.

use std::collections::BTreeMap;

use crate::cuerr::{CuResult, CUDA_ERROR_INVALID_VALUE};

/// Whether [addr, addr+len) lies inside the ranges (base → length) without a gap. Ranges that touch count as one:
/// PyTorch's expandable segments map physical allocations back to back and copy across the seams. An empty range
/// must start inside a range or at its end.
pub fn covered(ranges: &BTreeMap<u64, u64>, addr: u64, len: u64) -> CuResult<()> {
    let end = addr.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut at = addr;
    loop {
        let (&base, &size) = ranges.range(..=at).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let top = base.saturating_add(size);
        if end <= top {
            return Ok(());
        }
        if top <= at {
            // `at` is past this range (a gap, or an address in no range).
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        at = top;
    }
}

/// The bases of the pieces (base → piece, `len_of` its length) that exactly tile [ptr, ptr+size): whole pieces,
/// back to back, no gap, the first starting at `ptr`. What `cuMemUnmap` and `cuMemSetAccess` ask of mappings.
pub fn tiling<T>(pieces: &BTreeMap<u64, T>, len_of: impl Fn(&T) -> u64, ptr: u64, size: u64) -> CuResult<Vec<u64>> {
    let end = ptr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut out = Vec::new();
    let mut at = ptr;
    while at < end {
        let piece = pieces.get(&at).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        out.push(at);
        at += len_of(piece);
    }
    if at == end {
        Ok(out)
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_touch_cover_a_copy_and_gaps_do_not() {
        let ranges: BTreeMap<u64, u64> = [(0x1000, 0x100), (0x1100, 0x100), (0x1300, 0x100)].into();
        assert_eq!(covered(&ranges, 0x10f0, 0x20), Ok(()));
        assert_eq!(covered(&ranges, 0x1000, 0x200), Ok(()));
        assert_eq!(covered(&ranges, 0x11f0, 0x20), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(covered(&ranges, 0x1200, 1), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(covered(&ranges, 0x1400, 0), Ok(()));
        assert_eq!(covered(&ranges, 0xfff, 2), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(covered(&ranges, u64::MAX, 2), Err(CUDA_ERROR_INVALID_VALUE));
    }

    #[test]
    fn only_whole_pieces_back_to_back_tile_a_range() {
        let pieces: BTreeMap<u64, u64> = [(0x1000, 0x100), (0x1100, 0x200), (0x1400, 0x100)].into();
        let len = |s: &u64| *s;
        assert_eq!(tiling(&pieces, len, 0x1000, 0x300), Ok(vec![0x1000, 0x1100]));
        assert_eq!(tiling(&pieces, len, 0x1100, 0x200), Ok(vec![0x1100]));
        // Part of a piece, a start inside one, a gap, nothing at all.
        assert_eq!(tiling(&pieces, len, 0x1000, 0x180), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(tiling(&pieces, len, 0x1080, 0x80), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(tiling(&pieces, len, 0x1100, 0x400), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(tiling(&pieces, len, 0x1000, 0), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(tiling(&pieces, len, u64::MAX, 2), Err(CUDA_ERROR_INVALID_VALUE));
    }
}
