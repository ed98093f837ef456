//! Helpers shared by the integration tests: a PostgreSQL server, Python, random networks.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PostgreSQL server for tests, or a failure that says how to provide one.
pub fn postgres_admin_url() -> String {
    std::env::var("CTHPO_TEST_POSTGRES_URL").expect(
        "set CTHPO_TEST_POSTGRES_URL=postgresql://user:password@host:port/db (a user that may \
         create databases), e.g. from `scripts/postgres-local.sh start /tmp/cthpo-pg`",
    )
}

/// A fresh PostgreSQL database for one test, dropped (with its connections) afterwards.
pub struct PgDatabase {
    /// Its URL, with the password.
    pub url: String,
    name: String,
}

impl PgDatabase {
    /// Creates database `cthpo_test_<pid>_<name>` on the test server (replacing a leftover).
    pub fn create(name: &str) -> PgDatabase {
        let admin = postgres_admin_url();
        let database = format!("cthpo_test_{}_{name}", std::process::id()).to_lowercase();
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .expect("connect to CTHPO_TEST_POSTGRES_URL");
        for sql in [
            format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            format!("CREATE DATABASE {database}"),
        ] {
            client.batch_execute(&sql).unwrap();
        }
        let base = admin.rsplit_once('/').expect("URL with a database").0;
        PgDatabase {
            url: format!("{base}/{database}"),
            name: database,
        }
    }

    /// The password in the URL, if any (to check that no output shows it).
    pub fn password(&self) -> Option<&str> {
        let (_, rest) = self.url.split_once("://")?;
        let (auth, _) = rest.split_once('@')?;
        auth.split_once(':').map(|(_, password)| password)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&postgres_admin_url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Python with optuna 5.0.0: `CTHPO_OPTUNA_PYTHON`, else `./.venv/bin/python`. The test that
/// needs it is ignored by default, so running it without one is a failure, never a silent pass.
pub fn optuna_python() -> PathBuf {
    venv_python("CTHPO_OPTUNA_PYTHON", "optuna==5.0.0 psycopg2-binary")
}

/// Python with `packages`: the interpreter `variable` names, else `./.venv/bin/python` (which
/// `.ci/run` creates); a failure that says how to make one when there is none.
pub fn venv_python(variable: &str, packages: &str) -> PathBuf {
    let candidate = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        candidate.exists(),
        "no Python with {packages} at {} (set {variable} or run \
         `python3 -m venv .venv && .venv/bin/pip install {packages}`)",
        candidate.display()
    );
    candidate
}

/// Runs tests/python/optuna_check.py with `args` and returns the JSON it prints.
pub fn run_python(python: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/optuna_check.py");
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "optuna_check.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "optuna_check.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Randomises BatchNorm statistics so that its affine map is not the identity.
pub fn randomise_batch_norm(net: &cthpo::model::Net, rng: &mut rand::rngs::StdRng) {
    use rand::Rng;
    for named in net.named_vars() {
        let index: usize = named.name.split('.').next().unwrap().parse().unwrap();
        if !matches!(
            net.spec().layers[index],
            cthpo::model::LayerSpec::BatchNorm {}
        ) {
            continue;
        }
        let n = named.var.elem_count();
        let values: Vec<f32> = (0..n)
            .map(|_| match named.name.rsplit('.').next().unwrap() {
                "weight" => rng.random_range(-1.5..1.5),
                "bias" | "running_mean" => rng.random_range(-0.3..0.3),
                _ => rng.random_range(0.2..2.0),
            })
            .collect();
        let values = candle_core::Tensor::from_vec(values, n, &candle_core::Device::Cpu).unwrap();
        named.var.set(&values).unwrap();
    }
}
