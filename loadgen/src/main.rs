//! `loadgen`: drives many phones against an isle server and reports what it
//! saw, one scenario per subcommand. Without one it runs `chat`, so
//! `loadgen --target ADDR ...` keeps its meaning.

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Drive phones against an isle server",
    version
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// 1:1 messages between random pairs: the reference workload.
    Chat(loadgen::chat::Args),
    /// As many phones as the open-file limit allows, logged in and idle:
    /// server memory per connection and the login rate.
    Idle(loadgen::idle::Args),
    /// Every phone drops and comes back at once: logins per second, time
    /// until all are back, and the messages queued meanwhile.
    Storm(loadgen::storm::Args),
    /// A share of phones stop reading: the latency of everyone else,
    /// against a run without them, and the server's memory.
    Slow(loadgen::slow::Args),
    /// Phones in groups, each group's creator posting in a closed loop:
    /// member deliveries per second and their latency.
    Groups(loadgen::groups::Args),
    /// Phones in a ring of mutual contacts, each following its neighbours
    /// and changing presence at a fixed rate: updates per second and their
    /// latency.
    Presence(loadgen::presence::Args),
    /// Not a scenario: runs the bare relay server, the ceiling to compare
    /// a server against (forwarding only: no auth, storage or receipts).
    Relay(loadgen::relay::Args),
    /// Not a scenario: one phone driven by hand, commands from stdin
    /// (`help` lists them), every frame the server sends printed.
    Phone(loadgen::phone::Args),
}

const SCENARIOS: [&str; 8] = [
    "chat", "idle", "storm", "slow", "groups", "presence", "relay", "phone",
];

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    // Words clap answers itself, without a scenario.
    const OWN: [&str; 5] = ["help", "-h", "--help", "-V", "--version"];
    let named = argv
        .get(1)
        .is_some_and(|a| SCENARIOS.contains(&a.as_str()) || OWN.contains(&a.as_str()));
    if !named {
        argv.insert(1, "chat".to_string());
    }
    let code = match Cli::parse_from(argv).scenario {
        Scenario::Chat(args) => finish(loadgen::chat::run(&args), args.json, |report| {
            report.print_summary();
            let failures = report.failures();
            for failure in &failures {
                eprintln!("loadgen: failed: {failure}");
            }
            !write_report(args.report.as_deref(), &args, report, &report.curves)
                || !failures.is_empty()
        }),
        Scenario::Idle(args) => finish(loadgen::idle::run(&args), args.json, |report| {
            report.print_summary();
            !write_report(args.report.as_deref(), &args, report, &report.curves) || report.failed()
        }),
        Scenario::Storm(args) => finish(loadgen::storm::run(&args), args.json, |report| {
            report.print_summary();
            !write_report(args.report.as_deref(), &args, report, &report.curves) || report.failed()
        }),
        Scenario::Slow(args) => finish(loadgen::slow::run(&args), args.chat.json, |report| {
            report.print_summary();
            for failure in report.failures() {
                eprintln!("loadgen: failed: {failure}");
            }
            report.failed()
        }),
        Scenario::Groups(args) => finish(loadgen::groups::run(&args), args.json, |report| {
            report.print_summary();
            !write_report(args.report.as_deref(), &args, report, &report.curves) || report.failed()
        }),
        Scenario::Presence(args) => finish(loadgen::presence::run(&args), args.json, |report| {
            report.print_summary();
            !write_report(args.report.as_deref(), &args, report, &report.curves) || report.failed()
        }),
        Scenario::Relay(args) => match loadgen::relay::run(&args) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("loadgen relay: {error:#}");
                2
            }
        },
        Scenario::Phone(args) => {
            let input = std::io::BufReader::new(std::io::stdin());
            match loadgen::phone::run(&args, input, std::io::stdout()) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("loadgen phone: {error:#}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}

/// Writes `--report DIR` if it was asked for, with the run's `args`;
/// false if that failed.
fn write_report<R: Serialize>(
    dir: Option<&std::path::Path>,
    args: &impl Serialize,
    report: &R,
    curves: &loadgen::report::Curves,
) -> bool {
    let Some(dir) = dir else {
        return true;
    };
    match loadgen::report::write(dir, args, report, curves) {
        Ok(()) => true,
        Err(error) => {
            eprintln!("loadgen: writing the report: {error:#}");
            false
        }
    }
}

/// Prints a report (and its JSON on the last line); the exit code is 1 when
/// `summarise` says the run failed (a message lost, a phone cut off), 2
/// when it could not be carried out.
fn finish<R: Serialize>(
    result: anyhow::Result<R>,
    json: bool,
    summarise: impl FnOnce(&R) -> bool,
) -> i32 {
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            return 2;
        }
    };
    let failed = summarise(&report);
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("loadgen: {error}");
                return 2;
            }
        }
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command's definition (unique names and groups, for
    /// one) only in debug builds and only when it is parsed: check every
    /// subcommand here, not at a benchmarker's first run.
    #[test]
    fn every_subcommand_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
