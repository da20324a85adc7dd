//! Fuzzing on the stable toolchain: every parser of untrusted input has a target, a
//! `fuzz_*(data: &[u8])` function beside the parser in the crate that owns it, which must
//! never panic and asserts the parser's round trips. The driver here runs a target on its
//! seed corpus (`corpus/<target>/`) and then on mutations of it for a time budget,
//! catching panics and saving every input that causes one.
//!
//! There is no coverage feedback (that needs nightly's sanitizer coverage); the
//! mutations lean on the seeds, a per-target dictionary of tokens and splices between
//! inputs instead. The inputs are a function of the seed alone, so a run with the same
//! seed (`KORVET_FUZZ_SEED`) makes the same inputs in the same order.
//!
//! `cargo run -p korvet-fuzz --profile fuzz -- TARGET --seconds N` runs one for long;
//! `tests/smoke.rs` runs each for two seconds as part of `cargo test`.

mod mutate;
mod protobuf_roundtrip;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use mutate::{Mutator, Rng};

pub use protobuf_roundtrip::fuzz_protobuf_roundtrip;

/// A fuzz target: what it exercises and the tokens its mutations insert.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Tokens of the input's language, inserted by mutations (as libFuzzer's `-dict`).
    pub dictionary: &'static [&'static str],
    /// Longer mutated inputs are cut back to this.
    pub max_len: usize,
    /// The input is JSON documents separated by NUL bytes (see `mutate`).
    pub json: bool,
}

/// Numbers at the edges of the integer types, which parsers get wrong most.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "127",
    "255",
    "65535",
    "65536",
    "2147483647",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "170141183460469231731687303715884105727",
    "1e308",
    "1e-400",
    "0.000000001",
];

/// Every target, in the order `all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "quantity",
        run: korvet_apimachinery::fuzz::fuzz_quantity,
        dictionary: &[
            "m",
            "k",
            "Ki",
            "Mi",
            "Gi",
            "Ti",
            "Pi",
            "Ei",
            "n",
            "u",
            "M",
            "G",
            "T",
            "P",
            "E",
            "e",
            "E",
            "e-",
            "e+",
            ".",
            "-",
            "+",
            " ",
            "2147483647",
            "9",
        ],
        max_len: 128,
        json: false,
    },
    Target {
        name: "label_selector",
        run: korvet_apimachinery::fuzz::fuzz_label_selector,
        dictionary: &[
            " in ",
            " notin ",
            "(",
            ")",
            ",",
            "=",
            "==",
            "!=",
            "!",
            ">",
            "<",
            "app",
            "tier",
            "example.com/",
            "/",
            "-",
            "_",
            ".",
            "\"matchLabels\"",
            "\"matchExpressions\"",
            "\"key\"",
            "\"operator\"",
            "\"values\"",
            "\"In\"",
            "\"NotIn\"",
            "\"Exists\"",
            "\"DoesNotExist\"",
            ":",
            "{",
            "}",
            "[",
            "]",
            "\"",
        ],
        max_len: 512,
        json: true,
    },
    Target {
        name: "field_selector",
        run: korvet_apimachinery::fuzz::fuzz_field_selector,
        dictionary: &[
            "=",
            "==",
            "!=",
            ",",
            "\\",
            "\\,",
            "\\=",
            "\\\\",
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
        ],
        max_len: 512,
        json: false,
    },
    Target {
        name: "protobuf",
        run: korvet_apiserver::fuzz::fuzz_protobuf,
        dictionary: &[
            "k8s\0", "\n", "\x12", "\x1a", "\"", "\x08", "\x10", "\x7f", "\u{80}",
        ],
        max_len: 4096,
        json: false,
    },
    Target {
        name: "protobuf_roundtrip",
        run: fuzz_protobuf_roundtrip,
        dictionary: &["\n", "\x12", "\x1a", "\"", "\x08", "\x10", "\x7f", "\u{80}"],
        max_len: 4096,
        json: false,
    },
    Target {
        name: "strategic_merge_patch",
        run: korvet_apiserver::fuzz::fuzz_strategic_merge_patch,
        dictionary: &[
            "\"$patch\"",
            "\"replace\"",
            "\"delete\"",
            "\"merge\"",
            "\"$retainKeys\"",
            "\"$setElementOrder/containers\"",
            "\"$deleteFromPrimitiveList/finalizers\"",
            "\"containers\"",
            "\"name\"",
            "\"ports\"",
            "\"containerPort\"",
            "\"env\"",
            "\"volumes\"",
            "\"finalizers\"",
            "\"spec\"",
            "\"metadata\"",
            "\"template\"",
            "null",
            "{}",
            "[]",
            "\0",
            ":",
            ",",
        ],
        max_len: 4096,
        json: true,
    },
    Target {
        name: "json_patch",
        run: korvet_apiserver::fuzz::fuzz_json_patch,
        dictionary: &[
            "\"op\"",
            "\"add\"",
            "\"remove\"",
            "\"replace\"",
            "\"move\"",
            "\"copy\"",
            "\"test\"",
            "\"path\"",
            "\"from\"",
            "\"value\"",
            "/",
            "/-",
            "/0",
            "~0",
            "~1",
            "null",
            "{}",
            "[]",
            "\0",
            ":",
            ",",
        ],
        max_len: 4096,
        json: true,
    },
    Target {
        name: "wal_replay",
        run: korvet_store::embedded::fuzz::fuzz_wal_replay,
        dictionary: &[
            "LWVK", "\x01", "\x02", "\x03", "\x07", "revision", "wal_seq", "\0\0\0\0",
        ],
        max_len: 4096,
        json: false,
    },
    Target {
        name: "registry_upload",
        run: korvet_registry::fuzz::fuzz_upload,
        dictionary: &[
            "bytes=",
            "bytes ",
            "-",
            "/",
            ",",
            "*",
            "sha256:",
            "fuzz/app/blobs/",
            "fuzz/app/blobs/uploads/",
            "fuzz/app/manifests/",
            "?digest=",
            "?mount=",
            "&from=",
        ],
        max_len: 2048,
        json: false,
    },
    Target {
        name: "proxy_protocol",
        run: korvet_lb::fuzz::fuzz_proxy_protocol,
        dictionary: &[
            "PROXY ",
            "TCP4 ",
            "TCP6 ",
            "UNKNOWN",
            "\r\n",
            " ",
            "::ffff:",
            "::",
            ".",
            "\r\n\r\n\0\r\nQUIT\n",
            "\x21",
            "\x20",
            "\x11",
            "\x21",
        ],
        max_len: 512,
        json: false,
    },
    Target {
        name: "http_routes",
        run: korvet_lb::fuzz::fuzz_http_routes,
        dictionary: &[
            "route ",
            "default ",
            "get ",
            "Exact",
            "Prefix",
            "ImplementationSpecific",
            "*.",
            "/",
            "//",
            "/.",
            "/..",
            "../",
            "./",
            ":",
            "[",
            "]",
            "\n",
            " ",
            "-",
            ".",
            "10.0.0.1:80",
        ],
        max_len: 1024,
        json: false,
    },
];

/// The target of this name.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// How long and how to fuzz.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Duration,
    pub seed: u64,
    /// Where the seed corpora are (a directory per target).
    pub corpus_dir: PathBuf,
    /// Where inputs that panic are saved (a directory per target); `None`: not saved.
    pub crash_dir: Option<PathBuf>,
    /// Each input is written here before it runs, so that one that kills the process
    /// (a stack overflow aborts, it does not unwind) can be found: slow, for reruns.
    pub last_input: Option<PathBuf>,
    /// An input running longer than this is reported as a hang and ends the process.
    pub hang_after: Duration,
    /// The stack of the thread that runs the target: that of tokio's worker threads,
    /// where the servers parse requests.
    pub stack_size: usize,
}

impl Options {
    /// Defaults, with `KORVET_FUZZ_SEED` as the seed and `KORVET_FUZZ_CRASHES` as the
    /// crash directory when set.
    pub fn from_env() -> Options {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        Options {
            duration: Duration::from_secs(10),
            seed: std::env::var("KORVET_FUZZ_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0x6b6f_7276_6574),
            corpus_dir: manifest.join("corpus"),
            crash_dir: Some(
                std::env::var_os("KORVET_FUZZ_CRASHES")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| manifest.join("../../target/fuzz-crashes")),
            ),
            last_input: None,
            hang_after: Duration::from_secs(20),
            stack_size: 2 << 20,
        }
    }
}

/// An input that made the target panic.
#[derive(Clone, Debug)]
pub struct Crash {
    /// Where it panicked (`file:line:column`): crashes are told apart by it.
    pub location: String,
    pub message: String,
    /// The smallest input found that panics at the same place.
    pub input: Vec<u8>,
    /// Where the input was saved.
    pub saved: Option<PathBuf>,
}

/// What one target's run did.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub seeds: usize,
    pub inputs: u64,
    pub elapsed: Duration,
    pub crashes: Vec<Crash>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} inputs in {:.1} s ({:.0}/s) from {} seeds, {} crashes",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.seeds,
            self.crashes.len()
        )?;
        for crash in &self.crashes {
            write!(
                f,
                "\n  panicked at {}: {}\n  input ({} bytes): {}\n  input (text): {:?}",
                crash.location,
                crash.message,
                crash.input.len(),
                hex(&crash.input),
                String::from_utf8_lossy(&crash.input)
            )?;
            if let Some(path) = &crash.saved {
                write!(f, "\n  saved as {}", path.display())?;
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The seed corpus of a target: every file of its directory, in name order.
pub fn seeds(target: &Target, options: &Options) -> Vec<Vec<u8>> {
    let dir = options.corpus_dir.join(target.name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Distinct crashes kept per run; past that the run stops (something is badly broken).
const MAX_CRASHES: usize = 8;
/// Executions one crash's minimization may spend.
const MINIMIZE_BUDGET: usize = 4000;

/// Runs `target` on its seeds, then on mutations of them until the time is up.
pub fn fuzz(target: &'static Target, options: &Options) -> Report {
    install_panic_hook();
    let seeds = seeds(target, options);
    let current = Arc::new(Mutex::new(Vec::new()));
    let started_input = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let worker = {
        let (options, seeds, current, started_input, done) = (
            options.clone(),
            seeds.clone(),
            current.clone(),
            started_input.clone(),
            done.clone(),
        );
        std::thread::Builder::new()
            .name(format!("fuzz-{}", target.name))
            .stack_size(options.stack_size)
            .spawn(move || {
                let report = fuzz_loop(target, &options, seeds, &current, &started_input, start);
                done.store(true, Ordering::SeqCst);
                report
            })
    };
    let worker = match worker {
        Ok(worker) => worker,
        Err(e) => panic!("no thread for fuzzing: {e}"),
    };
    // The watchdog: the worker publishes when its current input started.
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let since = started_input.load(Ordering::SeqCst);
        let now = start.elapsed().as_millis() as u64;
        if since != u64::MAX && now.saturating_sub(since) > options.hang_after.as_millis() as u64 {
            let input = current.lock().map(|i| i.clone()).unwrap_or_default();
            let saved = save(target, options, "hang", &input);
            eprintln!(
                "{}: an input has run for more than {:?}: {}{}",
                target.name,
                options.hang_after,
                hex(&input),
                saved
                    .map(|p| format!(" (saved as {})", p.display()))
                    .unwrap_or_default()
            );
            // A hung thread cannot be stopped; the process must end.
            std::process::exit(70);
        }
    }
    match worker.join() {
        Ok(report) => report,
        Err(_) => panic!("the fuzzing thread of {} died", target.name),
    }
}

fn fuzz_loop(
    target: &'static Target,
    options: &Options,
    seeds: Vec<Vec<u8>>,
    current: &Mutex<Vec<u8>>,
    started_input: &AtomicU64,
    start: Instant,
) -> Report {
    let mut report = Report {
        target: target.name,
        seeds: seeds.len(),
        inputs: 0,
        elapsed: Duration::ZERO,
        crashes: Vec::new(),
    };
    let mut mutator = Mutator::new(
        Rng::new(options.seed ^ fnv(target.name.as_bytes())),
        seeds.clone(),
        target.dictionary,
        NUMBERS,
        target.max_len,
        target.json,
    );
    let mut next_seed = 0;
    while report.crashes.len() < MAX_CRASHES {
        // The seeds first, every one: they are the regression inputs too.
        let input = match seeds.get(next_seed) {
            Some(seed) => {
                next_seed += 1;
                seed.clone()
            }
            None if start.elapsed() >= options.duration => break,
            None => mutator.next_input(),
        };
        if let Some(path) = &options.last_input {
            let _ = std::fs::write(path, &input);
        }
        if let Ok(mut slot) = current.lock() {
            slot.clone_from(&input);
        }
        started_input.store(start.elapsed().as_millis() as u64, Ordering::SeqCst);
        let outcome = run_once(target, &input);
        started_input.store(u64::MAX, Ordering::SeqCst);
        report.inputs += 1;
        let Err((location, message)) = outcome else {
            continue;
        };
        if report.crashes.iter().any(|c| c.location == location) {
            continue;
        }
        let input = minimize(target, input, &location);
        let saved = save(target, options, "crash", &input);
        report.crashes.push(Crash {
            location,
            message,
            input,
            saved,
        });
    }
    report.elapsed = start.elapsed();
    report
}

/// Runs the target once; a panic gives its location and message.
pub fn run_once(target: &Target, input: &[u8]) -> Result<(), (String, String)> {
    install_panic_hook();
    CAPTURING.with(|c| c.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    CAPTURING.with(|c| c.set(false));
    outcome.map_err(|_| {
        CAPTURED
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| ("unknown".into(), "a panic without a message".into()))
    })
}

/// A smaller input that panics at the same place: chunks are cut out while it still
/// does, halving the chunk size down to single bytes.
fn minimize(target: &Target, mut input: Vec<u8>, location: &str) -> Vec<u8> {
    let mut budget = MINIMIZE_BUDGET;
    let mut chunk = input.len() / 2;
    while chunk > 0 && budget > 0 {
        let mut at = 0;
        while at < input.len() && budget > 0 {
            let end = (at + chunk).min(input.len());
            let mut candidate = input[..at].to_vec();
            candidate.extend_from_slice(&input[end..]);
            budget -= 1;
            match run_once(target, &candidate) {
                Err((l, _)) if l == location => input = candidate,
                _ => at += chunk,
            }
        }
        chunk /= 2;
    }
    input
}

fn save(target: &Target, options: &Options, kind: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = options.crash_dir.as_ref()?.join(target.name);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{kind}-{:016x}", fnv(input)));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// FNV-1a: names saved inputs by their content, and separates the targets' random
/// streams.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Panics on a thread running a target are recorded instead of printed (thousands of
/// expected-looking backtraces would bury the report); others print as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CAPTURING.with(Cell::get) {
                return previous(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "unknown".into());
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            CAPTURED.with(|c| *c.borrow_mut() = Some((location, message)));
        }));
    });
}
