//! The `cthpo` command line: parses arguments and dispatches into the library.

fn main() -> std::process::ExitCode {
    cthpo::cli::main()
}
