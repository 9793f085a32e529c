//! `cuGetProcAddress`'s lookup rules: a base name, a CUDA version and flags select one ABI variant of an
//! entry point, per NVIDIA's "Driver Entry Point Access" rules, from a table generated from cudaTypedefs.h.

/// An entry point's ABI variants: (CUDA version that introduced it, exported symbol), oldest first.
pub type Variants = &'static [(u32, &'static str)];

include!("generated/proc_table.rs");

use vgpu_cuda_sys::driver::CUdriverProcAddress_flags;

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`: prefer the `_ptsz`/`_ptds` variants.
pub const PER_THREAD_DEFAULT_STREAM: u64 =
    CUdriverProcAddress_flags::CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM.0 as u64;

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The exported symbol to hand out.
    Found(&'static str),
    /// The entry point exists, but only in a newer CUDA version than the one asked for.
    VersionNotSufficient,
    /// No entry point of that name (the `""` probe included).
    NotFound,
}

/// The variant of `name` for a program built against `version` with `flags`: the one introduced last at or
/// before `version`. With the per-thread flag, an entry point that has per-thread variants answers only with
/// those (the driver probed by ZLUDA's table generator behaves so: `cuLaunchKernel` at 6050 with flag 2 finds
/// nothing, as `cuLaunchKernel_ptsz` dates from 7000); one without them answers with its default variants.
pub fn lookup(name: &str, version: u32, flags: u64) -> Lookup {
    let Ok(at) = PROC_TABLE.binary_search_by(|(n, ..)| (*n).cmp(name)) else {
        return Lookup::NotFound;
    };
    let (_, default, per_thread) = PROC_TABLE[at];
    let rows = if flags & PER_THREAD_DEFAULT_STREAM != 0 && !per_thread.is_empty() {
        per_thread
    } else {
        default
    };
    match rows.iter().rev().find(|(introduced, _)| *introduced <= version) {
        Some((_, symbol)) => Lookup::Found(symbol),
        None => Lookup::VersionNotSufficient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Traces of the real driver 580 (tools/traces/README.md): part of the repository, so a missing one fails.
    const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/traces");

    fn trace(file: &str) -> String {
        let path = format!("{TRACES}/{file}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    /// `(name, version, flags, result)` for every `GPA2` line of a trace; both trace formats are accepted
    /// (`GPA2 name ver=V flags=F r=R` and `GPA2 name V F R found status`).
    fn trace_lookups(file: &str) -> Vec<(String, u32, u64, u32)> {
        let mut out = Vec::new();
        for line in trace(file).lines() {
            let Some(rest) = line.strip_prefix("GPA2 ") else {
                continue;
            };
            // The "" probe leaves an empty name: "GPA2  ver=0 ...".
            let fields: Vec<&str> = rest.split(' ').collect();
            let name = fields[0].to_string();
            let value = |i: usize, key: &str| -> u64 {
                let f = fields.get(i).copied().unwrap_or_default();
                f.strip_prefix(key).unwrap_or(f).parse().unwrap_or(u64::MAX)
            };
            out.push((name, value(1, "ver=") as u32, value(2, "flags="), value(3, "r=") as u32));
        }
        assert!(!out.is_empty(), "{file} has no GPA2 lines");
        out
    }

    #[test]
    fn table_is_sorted_and_names_only_exported_symbols() {
        assert!(PROC_TABLE.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, default, per_thread) in PROC_TABLE {
            for rows in [default, per_thread] {
                assert!(
                    rows.windows(2).all(|w| w[0].0 < w[1].0),
                    "{name}: versions not ascending"
                );
                for (_, symbol) in rows.iter() {
                    assert!(crate::exports::address_of(symbol).is_some(), "{symbol} is not exported");
                }
            }
        }
    }

    #[test]
    fn documented_rules() {
        use Lookup::*;
        assert_eq!(lookup("cuMemAlloc", 2000, 0), Found("cuMemAlloc"));
        assert_eq!(lookup("cuMemAlloc", 3020, 0), Found("cuMemAlloc_v2"));
        assert_eq!(lookup("cuMemAlloc", 13000, 2), Found("cuMemAlloc_v2"));
        assert_eq!(lookup("cuMemAlloc", 1000, 0), VersionNotSufficient);
        assert_eq!(lookup("cuCtxGetDevice", 12090, 0), Found("cuCtxGetDevice"));
        assert_eq!(lookup("cuCtxGetDevice", 13000, 0), Found("cuCtxGetDevice_v2"));
        assert_eq!(lookup("cuCtxCreate", 12050, 0), Found("cuCtxCreate_v4"));
        assert_eq!(lookup("cuLaunchKernel", 12000, 0), Found("cuLaunchKernel"));
        assert_eq!(lookup("cuLaunchKernel", 12000, 1), Found("cuLaunchKernel"));
        assert_eq!(lookup("cuLaunchKernel", 12000, 2), Found("cuLaunchKernel_ptsz"));
        assert_eq!(lookup("cuLaunchKernel", 6050, 2), VersionNotSufficient);
        assert_eq!(lookup("cuMemcpyHtoD", 13000, 2), Found("cuMemcpyHtoD_v2_ptds"));
        assert_eq!(
            lookup("cuStreamGetCaptureInfo", 11030, 2),
            Found("cuStreamGetCaptureInfo_v2_ptsz")
        );
        assert_eq!(lookup("cuGetProcAddress", 11030, 0), Found("cuGetProcAddress"));
        assert_eq!(lookup("cuGetProcAddress", 12000, 2), Found("cuGetProcAddress_v2"));
        assert_eq!(lookup("", 0, 0), NotFound);
        assert_eq!(lookup("cuMemAlloc_v2", 13000, 0), NotFound);
        assert_eq!(lookup("cuNoSuchThing", 13000, 0), NotFound);
    }

    /// Every (name, version, flags) the real driver 580 answered for static cudart 13.0 and for PyTorch must
    /// resolve here too: found (non-NULL) where it returned a function, and the "" probe not found.
    #[test]
    fn traces_resolve_as_on_the_real_driver() {
        let files = [
            "static-cudart-proc-address.txt",
            "static-cudart-lookups.txt",
            "torch-proc-address-and-export-tables.txt",
        ];
        let mut checked = 0;
        for file in files {
            for (name, version, flags, result) in trace_lookups(file) {
                assert_eq!(result, 0, "{file}: {name}@{version} failed natively");
                match lookup(&name, version, flags) {
                    Lookup::Found(symbol) => {
                        assert!(!name.is_empty());
                        assert!(symbol.starts_with(name.as_str()), "{name} → {symbol}");
                        assert!(crate::exports::address_of(symbol).is_some(), "{symbol} has no address");
                    }
                    other => assert!(name.is_empty(), "{file}: {name}@{version} flags {flags} → {other:?}"),
                }
                checked += 1;
            }
        }
        assert!(checked > 2000, "only {checked} lookups checked");
    }

    /// PyTorch's CUPTI trace names the variant each call went to (`cuCtxGetDevice_v2`, `cuMemAlloc_v2`, ...):
    /// each must be what one of that process's lookups resolves to here.
    #[test]
    fn torch_calls_go_to_the_variants_its_lookups_resolve_to() {
        let lookups = trace_lookups("torch-proc-address-and-export-tables.txt");
        let calls = trace("torch-matmul-driver-calls.txt");
        let resolved: std::collections::HashSet<&str> = lookups
            .iter()
            .filter_map(|(n, v, f, _)| match lookup(n, *v, *f) {
                Lookup::Found(s) => Some(s),
                _ => None,
            })
            .collect();
        let mut checked = 0;
        for line in calls.lines() {
            let Some(name) = line.split_whitespace().nth(1).filter(|n| n.starts_with("cu")) else {
                continue;
            };
            assert!(
                resolved.contains(name),
                "torch called {name}, which no lookup of its resolves to"
            );
            checked += 1;
        }
        assert!(checked > 30);
    }
}
