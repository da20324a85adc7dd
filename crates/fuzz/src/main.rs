//! `korvet-fuzz TARGET|all|list [--seconds N] [--seed N] [--crashes DIR] [--last-input FILE]`
//! runs fuzz targets for a while; `korvet-fuzz TARGET --replay FILE...` runs a target on
//! saved inputs. Build it with `--profile fuzz` (release speed, overflow checks on).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use korvet_fuzz::{Options, TARGETS};

const USAGE: &str = "usage: korvet-fuzz TARGET|all|list [--seconds N] [--seed N] [--crashes DIR] \
[--last-input FILE] [--replay FILE...]";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("korvet-fuzz: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut args = std::env::args().skip(1);
    let which = args.next().ok_or("no target given")?;
    let mut options = Options::from_env();
    let mut replay = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                let seconds: f64 = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                options.duration = Duration::from_secs_f64(seconds);
            }
            "--seed" => options.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--crashes" => options.crash_dir = Some(PathBuf::from(value()?)),
            "--last-input" => options.last_input = Some(PathBuf::from(value()?)),
            "--replay" => {
                replay.push(PathBuf::from(value()?));
                replay.extend(args.by_ref().map(PathBuf::from));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if which == "list" {
        for target in TARGETS {
            println!("{}", target.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let targets: Vec<_> = if which == "all" {
        TARGETS.iter().collect()
    } else {
        vec![korvet_fuzz::target(&which).ok_or(format!("no target {which}"))?]
    };
    if !replay.is_empty() {
        let [target] = targets[..] else {
            return Err("--replay needs one target".into());
        };
        for path in &replay {
            let input = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("{}: {} bytes", path.display(), input.len());
            // Not caught: the panic and its backtrace are what a replay is for.
            (target.run)(&input);
        }
        println!("no panic");
        return Ok(ExitCode::SUCCESS);
    }
    println!("seed {}", options.seed);
    let mut failed = false;
    for target in targets {
        let report = korvet_fuzz::fuzz(target, &options);
        println!("{report}");
        failed |= !report.crashes.is_empty();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
