//! Inputs the fuzzers found (`scripts/fuzz.sh`), kept under `tests/data/fuzz-regressions/<target>/`
//! and run through the same target bodies (`fuzz/src/lib.rs`), so a fixed finding stays fixed.

// The fuzz crate's public API, private here.
#[allow(unreachable_pub)]
#[path = "../../fuzz/src/lib.rs"]
mod targets;

#[test]
fn every_kept_fuzz_input_is_handled_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut ran = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some((_, target)) = targets::TARGETS.iter().find(|(n, _)| *n == name) else {
            panic!("{}: no fuzz target {name:?}", dir.display());
        };
        for input in std::fs::read_dir(&dir).unwrap() {
            let path = input.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{} panics again", path.display());
            }
            ran += 1;
        }
    }
    assert!(ran > 0, "no inputs under {}", root.display());
}
