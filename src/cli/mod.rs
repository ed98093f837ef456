//! Command-line interface: clap commands, each a thin call into the library.

use crate::store::{DEFAULT_STUDY_DIR, Storage, Store};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` for command output that returns an error naming standard output, instead of
/// panicking, when it cannot be written (a full disk); use in functions returning
/// `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
            .map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))?
    }};
}

/// `print!` for command output, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)
            .and_then(|()| std::io::stdout().flush())
            .map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))?
    }};
}

mod best;
mod checkpoint;
mod evaluate;
mod export;
mod plot;
mod resume;
mod run;
mod status;
mod train;
mod trials;
mod verify;

/// Hyperparameter optimisation for certified training of neural networks.
///
/// A study tunes one certified-training method (standard, pgd, ibp, crown_ibp, sabr, taps,
/// staps, mtl_ibp) with Bayesian optimisation; every trial trains a network with the embedded
/// CPU trainer and scores natural, adversarial (PGD) and certified accuracy.
#[derive(Debug, Parser)]
#[command(name = "cthpo", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run (or continue) a hyperparameter-optimisation study for one method.
    // Boxed: the run command's flags make it by far the largest variant.
    Run(Box<run::RunArgs>),
    /// Continue a stored study by name.
    Resume(resume::ResumeArgs),
    /// Train one network with one method and configuration, then evaluate it.
    Train(train::TrainArgs),
    /// Measure natural, adversarial and certified accuracy of a trained network.
    Verify(verify::VerifyArgs),
    /// Summarise stored studies: trials by state and the best configuration.
    Status(status::StatusArgs),
    /// List the trials of a study (table, JSON or CSV).
    Trials(trials::TrialsArgs),
    /// Export the best configuration (and checkpoint) of a study.
    Best(best::BestArgs),
    /// Retrain a study's chosen configurations on training + validation data and evaluate them
    /// on the test split (natural, PGD, certified at several radii with α-CROWN).
    Evaluate(evaluate::EvaluateArgs),
    /// Write a trained network as ONNX with one VNN-LIB robustness property per test image and
    /// a VNN-COMP instances.csv, for external verifiers such as α,β-CROWN.
    Export(export::ExportArgs),
    /// Draw Pareto fronts and optimisation history of studies (PNG and SVG).
    Plot(plot::PlotArgs),
}

/// Exit code of a command the user stopped with Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED_EXIT_CODE: i32 = 130;

/// The error of a command the user stopped with Ctrl-C after it saved its work: exits with
/// [`INTERRUPTED_EXIT_CODE`] and no further message.
#[derive(Debug, thiserror::Error)]
#[error("stopped by the user")]
struct Interrupted;

/// Where a study command finds the study database and the checkpoints (`--dir`, `--storage`).
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Study directory: this machine's checkpoints and, without --storage, the SQLite database
    /// cthpo.db.
    #[arg(long, default_value = DEFAULT_STUDY_DIR)]
    pub dir: PathBuf,
    /// Study database: sqlite:///path/to/cthpo.db, or postgresql://user:password@host:port/db
    /// to share a study between machines (without a password in the URL, $PGPASSWORD is used)
    /// [default: sqlite:///DIR/cthpo.db].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
}

impl StorageArgs {
    /// The storage: `--storage`, else the directory's SQLite database.
    pub fn storage(&self) -> anyhow::Result<Storage> {
        match &self.storage {
            Some(url) => Ok(Storage::parse(url)?),
            None => Ok(Storage::sqlite_in(&self.dir)),
        }
    }

    /// Opens the existing study database for reading only (reading commands never create or
    /// write one).
    pub fn open_existing(&self) -> anyhow::Result<Store> {
        Store::open_read_only_at(&self.storage()?, &self.dir)
            .context("cannot open the study database")
    }
}

/// Parses the process arguments, runs the command and turns errors into a non-zero exit code.
pub fn main() -> ExitCode {
    // Output piped into a reader that stops early (`cthpo trials | head`) ends the command
    // quietly, as in other Unix tools, instead of a "Broken pipe" panic.
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Resume(args) => resume::run(args),
        Command::Train(args) => train::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Status(args) => status::run(args),
        Command::Trials(args) => trials::run(args),
        Command::Best(args) => best::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Export(args) => export::run(args),
        Command::Plot(args) => plot::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<Interrupted>() => ExitCode::from(INTERRUPTED_EXIT_CODE as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
