//! `CUDA_VISIBLE_DEVICES` as NVIDIA's driver reads it: which devices of the process's system (every server's
//! devices, servers in the order given) CUDA numbers, and in what order. NVML, like NVIDIA's, ignores it.
//!
//! The rules (NVIDIA's CUDA programming guide, "CUDA Environment Variables"; the finer points as PyTorch's test
//! suite pins the driver's behaviour, since PyTorch must predict the driver's device count without it):
//! - unset: every device, in system order; set but empty: none.
//! - a comma-separated list of indices or of `GPU-` UUIDs (a prefix is enough when it names exactly one device);
//!   devices are numbered in the list's order.
//! - indices are read as C's `strtoul` reads them: leading blanks, an optional sign, the leading digits (the rest
//!   of the entry is ignored: `1gpu2` is 1; `-0` is 0).
//! - the first invalid entry ends the list: an index past the last device, a negative one, an entry without
//!   digits, an unknown or ambiguous UUID, an entry of the other kind than the first (indices and UUIDs are not
//!   mixed), a MIG instance (not offered by vGPU).
//! - a device named twice hides every device.

/// The system indices CUDA numbers, in ordinal order, for the variable's value `var` (`None`: unset) over a
/// system whose devices have these UUIDs (NVIDIA's text form, `GPU-xxxxxxxx-xxxx-...`).
pub fn select(var: Option<&str>, uuids: &[String]) -> Vec<usize> {
    let Some(text) = var else {
        return (0..uuids.len()).collect();
    };
    let by_uuid = text
        .trim_start()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("GPU-"));
    let mut chosen: Vec<usize> = Vec::new();
    for entry in text.split(',') {
        let found = if by_uuid {
            uuid_entry(entry, uuids)
        } else {
            index_entry(entry).filter(|&i| i < uuids.len())
        };
        let Some(index) = found else { break };
        if chosen.contains(&index) {
            return Vec::new();
        }
        chosen.push(index);
    }
    chosen
}

/// An index entry as `strtoul` reads it (`None`: no digits, or negative and not zero).
fn index_entry(entry: &str) -> Option<usize> {
    let s = entry.trim_start();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let end = digits.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    // More digits than any device count: an index past the end.
    let value: usize = digits[..end].parse().unwrap_or(usize::MAX);
    match (negative, value) {
        (true, 0) | (false, _) => Some(value),
        (true, _) => None,
    }
}

/// A `GPU-` entry: the one device whose UUID starts with it (case-insensitive).
fn uuid_entry(entry: &str, uuids: &[String]) -> Option<usize> {
    let prefix = entry.trim();
    if !prefix.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("GPU-")) || prefix.len() <= 4 {
        return None;
    }
    let prefix = prefix.to_ascii_lowercase();
    let mut matches = uuids
        .iter()
        .enumerate()
        .filter(|(_, u)| u.to_ascii_lowercase().starts_with(&prefix));
    match (matches.next(), matches.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("GPU-{:02x}{:06x}-aaaa-bbbb-cccc-0000000000{:02x}", i * 16 + 1, i, i))
            .collect()
    }

    #[test]
    fn unset_means_all_and_empty_means_none() {
        assert_eq!(select(None, &system(3)), vec![0, 1, 2]);
        assert_eq!(select(Some(""), &system(3)), Vec::<usize>::new());
    }

    #[test]
    fn indices_order_the_devices_and_the_first_invalid_entry_ends_the_list() {
        let s = system(6);
        assert_eq!(select(Some("2,1"), &s), vec![2, 1]);
        assert_eq!(select(Some("0,2,-1,1"), &s), vec![0, 2], "NVIDIA's documented example");
        assert_eq!(select(Some("0, 1, 2, -1, 3"), &s), vec![0, 1, 2]);
        assert_eq!(
            select(Some("1gpu2,2ampere"), &s),
            vec![1, 2],
            "strtoul reads the leading digits"
        );
        assert_eq!(
            select(Some("2, +3, -0, 5"), &s),
            vec![2, 3, 0, 5],
            "signs as strtoul reads them"
        );
        assert_eq!(select(Some("one,two,3,4"), &s), Vec::<usize>::new());
        assert_eq!(select(Some("4,3,two,one"), &s), vec![4, 3]);
        assert_eq!(
            select(Some("1,6,2"), &s),
            vec![1],
            "an index past the last device ends the list"
        );
        assert_eq!(select(Some("1,99999999999999999999999,2"), &s), vec![1]);
        assert_eq!(select(Some("1,,2"), &s), vec![1], "an empty entry ends the list");
    }

    #[test]
    fn a_device_named_twice_hides_every_device() {
        assert_eq!(select(Some("0, 1, 2, 1"), &system(4)), Vec::<usize>::new());
        assert_eq!(select(Some("3,-0,0"), &system(4)), Vec::<usize>::new());
    }

    #[test]
    fn uuid_prefixes_name_one_device_each() {
        let s = system(3);
        let full = s[2].clone();
        assert_eq!(select(Some(&format!("{full},{}", &s[0][..12])), &s), vec![2, 0]);
        assert_eq!(select(Some(&full.to_uppercase().replace("GPU-", "gpu-")), &s), vec![2]);
        // "GPU-" alone, or a prefix every device shares, is ambiguous: the list ends there.
        assert_eq!(select(Some(&format!("{},GPU-", &s[1][..10])), &s), vec![1]);
        assert_eq!(select(Some("GPU-,0"), &s), Vec::<usize>::new());
        assert_eq!(
            select(Some(&format!("{},GPU-ffff", &s[0][..9])), &s),
            vec![0],
            "unknown UUID"
        );
        assert_eq!(
            select(Some(&format!("{},1", &s[0][..9])), &s),
            vec![0],
            "no mixing with indices"
        );
        assert_eq!(
            select(Some(&format!("0,{}", &s[1][..9])), &s),
            vec![0],
            "nor the other way round"
        );
        assert_eq!(select(Some(&format!("{0},{0}", &s[1][..9])), &s), Vec::<usize>::new());
        assert_eq!(
            select(Some("MIG-GPU-1234/0/0"), &s),
            Vec::<usize>::new(),
            "MIG instances are not offered"
        );
    }
}
