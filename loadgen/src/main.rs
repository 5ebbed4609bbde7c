//! `loadgen`: drives many phones against an isle server and reports what it
//! saw. The work is in [`loadgen::chat`]; this is its command line.

use clap::Parser;

fn main() {
    let args = loadgen::chat::Args::parse();
    match loadgen::chat::run(&args) {
        Ok(report) => {
            report.print_summary();
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(error) => {
                        eprintln!("loadgen: {error}");
                        std::process::exit(2);
                    }
                }
            }
            if report.lost > 0 {
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::exit(2);
        }
    }
}
