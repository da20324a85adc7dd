//! The CI smoke run of every fuzz target: its seed corpus (the regression inputs), then
//! mutations for about two seconds each (`KORVET_FUZZ_SMOKE_SECONDS`); any panic fails
//! it, with the input that caused it. Long runs use the `korvet-fuzz` binary.

use std::time::Duration;

use korvet_fuzz::{fuzz, seeds, Options, TARGETS};

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let mut options = Options::from_env();
    options.duration = Duration::from_secs_f64(
        std::env::var("KORVET_FUZZ_SMOKE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    );
    let mut failures = Vec::new();
    for target in TARGETS {
        // A target without seeds would only ever see random bytes.
        assert!(
            seeds(target, &options).len() >= 3,
            "{}: fewer than 3 seeds in corpus/{}",
            target.name,
            target.name
        );
        let report = fuzz(target, &options);
        println!("{report}");
        if !report.crashes.is_empty() {
            failures.push(report.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz targets panicked (seed {}; KORVET_FUZZ_SEED reproduces it):\n{}",
        options.seed,
        failures.join("\n")
    );
}
