//! Command-line flags of the benchmark examples: `--flag value` pairs and bare `--switch`es.
//! Each example includes this file with `#[path = "common/args.rs"] mod args;`.
#![allow(dead_code)] // each example uses only some of the accessors

use std::str::FromStr;

/// The example's arguments after the program name.
pub struct Args(Vec<String>);

impl Args {
    /// The process's arguments.
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    /// The value after `flag`, if the flag is given.
    pub fn optional(&self, flag: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == flag)?;
        self.0.get(i + 1).cloned()
    }

    /// The value after `flag`, or `default`.
    pub fn value(&self, flag: &str, default: &str) -> String {
        self.optional(flag).unwrap_or_else(|| default.to_string())
    }

    /// The value after `flag` (or `default`) parsed; panics with the flag's name if it does not parse.
    pub fn parsed<T: FromStr>(&self, flag: &str, default: &str) -> T {
        self.value(flag, default)
            .parse()
            .unwrap_or_else(|_| panic!("{flag} takes a number"))
    }

    /// True when the bare switch is given.
    pub fn has(&self, switch: &str) -> bool {
        self.0.iter().any(|a| a == switch)
    }

    /// Panics on an argument that is neither a known flag (followed by its value) nor a known switch.
    pub fn check_known(&self, flags: &[&str], switches: &[&str], usage: &str) {
        let mut i = 0;
        while i < self.0.len() {
            let arg = self.0[i].as_str();
            if flags.contains(&arg) {
                i += 2;
            } else if switches.contains(&arg) {
                i += 1;
            } else {
                panic!("unknown argument {arg}; see {usage}");
            }
        }
    }
}
