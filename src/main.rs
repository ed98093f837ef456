//! The `cthpo` command line: parses arguments and dispatches into the library.

fn main() -> std::process::ExitCode {
    // candle's element-wise worker threads spin 25,000 times before sleeping after every op;
    // on small CPUs (e.g. 2 cores) they steal the cores our own kernels run on. Measured:
    // an IBP training step of cnn-small is ~20% faster without the spinning.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    cthpo::kernels::retain_freed_memory();
    cthpo::cli::main()
}
