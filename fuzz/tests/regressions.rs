//! Every saved input runs through its target on each `cargo test`: crashes the fuzzer found (`regressions/<target>/`,
//! kept forever once fixed) and the seed corpus (`corpus/<target>/`, checked into the repository).

use std::path::Path;

#[test]
fn every_saved_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for (name, run) in vgpu_fuzz::TARGETS {
        for dir in ["regressions", "corpus"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
                eprintln!("{name}: {}", entry.path().display());
                run(&bytes);
                ran += 1;
            }
        }
    }
    // The seeds exist for every target: a checkout without them would test nothing.
    for (name, _) in vgpu_fuzz::TARGETS {
        assert!(root.join("corpus").join(name).is_dir(), "corpus/{name} is missing");
    }
    assert!(ran >= vgpu_fuzz::TARGETS.len(), "only {ran} saved inputs ran");
}
