//! Where a study database lives: an SQLite file (`sqlite:///path/cthpo.db`) or a PostgreSQL
//! server (`postgresql://user:password@host:port/database`). The password is kept only in the
//! connection settings: every display of a storage (logs, errors, `status`) leaves it out.

use super::{DB_FILE_NAME, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A study database: an SQLite file or a PostgreSQL server.
#[derive(Clone)]
pub enum Storage {
    /// An SQLite database file (created on first use).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A database on a PostgreSQL server.
    Postgres(Box<PostgresTarget>),
}

/// Connection settings of a PostgreSQL storage, with the password kept out of every display.
#[derive(Clone)]
pub struct PostgresTarget {
    pub(super) config: postgres::Config,
    shown: String,
}

impl PostgresTarget {
    /// The URL without its password (`postgresql://user@host:port/db`), for messages.
    pub fn redacted(&self) -> &str {
        &self.shown
    }
}

impl Storage {
    /// The default storage of a study directory: `<dir>/cthpo.db`.
    pub fn sqlite_in(dir: impl AsRef<Path>) -> Storage {
        Storage::Sqlite {
            path: dir.as_ref().join(DB_FILE_NAME),
        }
    }

    /// Parses `sqlite:///path`, `postgresql://…` or `postgres://…` (a driver suffix such as
    /// Optuna's `postgresql+psycopg2://` is accepted). A PostgreSQL URL without a password
    /// takes it from the `PGPASSWORD` environment variable, as `psql` does.
    pub fn parse(url: &str) -> Result<Storage, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidStorage {
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "expected sqlite:///path/to/cthpo.db or postgresql://user:password@host:port/database",
            ));
        };
        let engine = scheme.split('+').next().unwrap_or_default();
        match engine.to_ascii_lowercase().as_str() {
            "sqlite" => {
                // sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy (and Optuna) read them.
                let Some(path) = rest.strip_prefix('/') else {
                    return Err(invalid("an SQLite URL is sqlite:///path (three slashes)"));
                };
                if path.is_empty() {
                    return Err(invalid("the SQLite URL names no file"));
                }
                Ok(Storage::Sqlite {
                    path: PathBuf::from(path),
                })
            }
            "postgresql" | "postgres" => {
                let mut config = postgres::Config::from_str(&format!("postgresql://{rest}"))
                    .map_err(|e| StoreError::InvalidStorage {
                        reason: format!("not a PostgreSQL URL: {e}"),
                    })?;
                if config.get_password().is_none()
                    && let Ok(password) = std::env::var("PGPASSWORD")
                {
                    config.password(password);
                }
                if config.get_hosts().is_empty() {
                    config.host("localhost");
                }
                if config.get_user().is_none_or(str::is_empty) {
                    return Err(invalid(
                        "the PostgreSQL URL names no user (postgresql://user@host/db)",
                    ));
                }
                let shown = redacted_url(&config);
                Ok(Storage::Postgres(Box::new(PostgresTarget {
                    config,
                    shown,
                })))
            }
            _ => Err(invalid(
                "unknown scheme: use sqlite:///path/to/cthpo.db or postgresql://user:password@host:port/database",
            )),
        }
    }

    /// True for a database server shared by several machines (liveness by heartbeat only).
    pub fn is_server(&self) -> bool {
        matches!(self, Storage::Postgres(_))
    }
}

/// `postgresql://user@host:port/db` from connection settings (never the password).
fn redacted_url(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or_default();
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgresql://{user}@{}/{db}", hosts.join(","))
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Sqlite { path } => write!(f, "sqlite:///{}", path.display()),
            Storage::Postgres(target) => f.write_str(&target.shown),
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({self})")
    }
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresTarget({})", self.shown)
    }
}

impl FromStr for Storage {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Storage, StoreError> {
        Storage::parse(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let s = Storage::parse("postgresql://alice:s3cret@db.lab:5433/hpo").unwrap();
        assert!(s.is_server());
        assert_eq!(s.to_string(), "postgresql://alice@db.lab:5433/hpo");
        assert!(!format!("{s:?}").contains("s3cret"));
        let s = Storage::parse("postgresql+psycopg2://bob:pw@h/d").unwrap();
        assert_eq!(s.to_string(), "postgresql://bob@h:5432/d");
        let s = Storage::parse("sqlite:///runs/cthpo.db").unwrap();
        assert!(!s.is_server());
        assert_eq!(s.to_string(), "sqlite:///runs/cthpo.db");
        let s = Storage::parse("sqlite:////abs/cthpo.db").unwrap();
        assert_eq!(s.to_string(), "sqlite:////abs/cthpo.db");
        for bad in [
            "mysql://u:p@h/d",
            "cthpo.db",
            "sqlite://x.db",
            "postgresql://:pw@h/d",
        ] {
            let err = Storage::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("pw") || !bad.contains(":pw"), "{err}");
        }
    }
}
