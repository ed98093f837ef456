//! Opening a study database: SQLite files (WAL mode) or PostgreSQL servers, creating or
//! checking Optuna's schema, paths of the study directory and its checkpoints, integrity checks.

use super::engine::{Conn, Pg};
use super::{BUSY_TIMEOUT, Storage, Store, StoreError, schema};
use rusqlite::{Connection, OpenFlags};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Store {
    /// Opens the database of a study directory (`<dir>/cthpo.db`), creating the directory, the
    /// database and Optuna's schema if missing; an existing database must be an Optuna v12
    /// database.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        Store::open_at(&Storage::sqlite_in(dir), dir)
    }

    /// Opens the database of an existing study directory; never creates anything.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        Store::open_existing_at(&Storage::sqlite_in(dir), dir)
    }

    /// Opens the database of an existing study directory for reading only (see
    /// [`Store::open_read_only_at`]).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        Store::open_read_only_at(&Storage::sqlite_in(dir), dir)
    }

    /// Opens an existing study database for reading only: for SQLite nothing is created or
    /// written (not even the `-wal`/`-shm` files when the folder is read-only), so a copy on a
    /// read-only mount or another user's database can be inspected; a PostgreSQL server's own
    /// permissions decide there.
    pub fn open_read_only_at(
        storage: &Storage,
        dir: impl AsRef<Path>,
    ) -> Result<Store, StoreError> {
        let Storage::Sqlite { path: db_path } = storage else {
            return Store::connect(storage, dir.as_ref(), false);
        };
        if !db_path.is_file() {
            return Err(StoreError::Missing {
                path: db_path.clone(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = |target: &str| -> Result<Store, StoreError> {
            let sql = |source| StoreError::Sqlite {
                path: db_path.clone(),
                source,
            };
            let conn = Connection::open_with_flags(target, flags).map_err(sql)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
            let store = Store {
                conn: Conn::Sqlite(conn),
                storage: storage.clone(),
                dir: dir.as_ref().to_path_buf(),
                db_path: db_path.clone(),
            };
            store.check_schema()?;
            Ok(store)
        };
        match open(&db_path.to_string_lossy()) {
            // A WAL database needs its `-shm` file; where it cannot be created (read-only
            // directory) and no writer has it open, SQLite reads the file as immutable.
            Err(StoreError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) =>
            {
                open(&immutable_uri(db_path))
            }
            other => other,
        }
    }

    /// Opens `storage`, creating the database file (and its folder) or Optuna's schema on an
    /// empty PostgreSQL database if missing; `dir` is where this process keeps checkpoints.
    pub fn open_at(storage: &Storage, dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        if let Storage::Sqlite { path } = storage
            && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        {
            if parent.exists() && !parent.is_dir() {
                return Err(StoreError::Io {
                    path: parent.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        "is a file, not a study directory",
                    ),
                });
            }
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        Store::connect(storage, dir.as_ref(), true)
    }

    /// Opens an existing study database at `storage`; never creates anything.
    pub fn open_existing_at(storage: &Storage, dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        if let Storage::Sqlite { path } = storage
            && !path.is_file()
        {
            return Err(StoreError::Missing { path: path.clone() });
        }
        Store::connect(storage, dir.as_ref(), false)
    }

    /// A second connection to the same database and study directory (e.g. for a thread that
    /// refreshes heartbeats while the trial runs).
    pub fn reopen(&self) -> Result<Store, StoreError> {
        Store::connect(&self.storage, &self.dir, false)
    }

    fn connect(storage: &Storage, dir: &Path, create: bool) -> Result<Store, StoreError> {
        let (conn, db_path) = match storage {
            Storage::Sqlite { path } => {
                let sql = |source| StoreError::Sqlite {
                    path: path.clone(),
                    source,
                };
                let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                if create {
                    flags |= OpenFlags::SQLITE_OPEN_CREATE;
                }
                let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
                conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
                (Conn::Sqlite(conn), path.clone())
            }
            Storage::Postgres(target) => {
                let pg = Pg::connect(target).map_err(|error| StoreError::Postgres {
                    location: target.redacted().to_string(),
                    error,
                })?;
                (
                    Conn::Postgres(Box::new(RefCell::new(pg))),
                    PathBuf::from(target.redacted()),
                )
            }
        };
        let store = Store {
            conn,
            storage: storage.clone(),
            dir: dir.to_path_buf(),
            db_path,
        };
        store.init_schema(create)?;
        if let Conn::Sqlite(_) = store.conn {
            store.enable_wal();
        }
        Ok(store)
    }

    /// The study directory (where this process writes checkpoints).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file; for PostgreSQL, the server URL without password.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The storage this store was opened on.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The storage as a URL without password, for messages and `status`.
    pub fn location(&self) -> String {
        self.storage.to_string()
    }

    /// Checkpoint folder of a trial relative to the study directory: `<study>/trial-<number>`.
    pub fn checkpoint_rel_path(study_name: &str, number: i64) -> PathBuf {
        Path::new(study_name).join(format!("trial-{number}"))
    }

    /// Checkpoint folder of a trial: `<dir>/<study>/trial-<number>`.
    pub fn checkpoint_dir(&self, study_name: &str, number: i64) -> PathBuf {
        self.dir
            .join(Store::checkpoint_rel_path(study_name, number))
    }

    /// Resolves a stored `checkpoint_path` attribute: relative paths are under the study
    /// directory; `host:/absolute/path` (written by workers of a server storage) is the path
    /// on that host.
    pub fn resolve_checkpoint_path(&self, stored: &str) -> PathBuf {
        let (_, path) = split_checkpoint_host(stored);
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    /// Creates Optuna's schema in an empty database (when `create`), or checks an existing one.
    fn init_schema(&self, create: bool) -> Result<(), StoreError> {
        let tables = self.read(|tx| tx.table_names().map_err(|e| self.db_err(e)))?;
        if tables.is_empty() && create {
            self.write(|tx| {
                let e = |err| self.db_err(err);
                tx.lock_schema().map_err(e)?;
                // Another process may have created the schema while we waited for the lock.
                if tx.table_names().map_err(e)?.is_empty() {
                    tx.create_schema().map_err(e)?;
                    tx.execute(
                        "INSERT INTO version_info (version_info_id, schema_version, library_version) \
                         VALUES (1, ?1, ?2)",
                        &[schema::SCHEMA_VERSION.into(), schema::LIBRARY_VERSION.into()],
                    )
                    .map_err(e)?;
                    tx.execute(
                        "INSERT INTO alembic_version (version_num) VALUES (?1)",
                        &[schema::ALEMBIC_VERSION.into()],
                    )
                    .map_err(e)?;
                }
                Ok(())
            })?;
        } else if tables.is_empty() && matches!(self.conn, Conn::Postgres(_)) {
            return Err(StoreError::Missing {
                path: self.db_path.clone(),
            });
        }
        self.check_schema()
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let (tables, version, alembic) = self.read(|tx| {
            let e = |err| self.db_err(err);
            let tables = tx.table_names().map_err(e)?;
            if schema::TABLES
                .iter()
                .any(|t| !tables.iter().any(|have| have == t))
            {
                return Ok((tables, None, Vec::new()));
            }
            let version = tx
                .query_opt(
                    "SELECT schema_version FROM version_info WHERE version_info_id = 1",
                    &[],
                )
                .map_err(e)?
                .map(|r| r.opt_int(0))
                .transpose()
                .map_err(e)?;
            let alembic = tx
                .query("SELECT version_num FROM alembic_version", &[])
                .map_err(e)?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<Vec<String>, _>>()
                .map_err(e)?;
            Ok((tables, Some(version), alembic))
        })?;
        let missing = schema::TABLES
            .iter()
            .any(|t| !tables.iter().any(|have| have == t));
        if missing {
            return Err(StoreError::NotOptuna {
                path: self.db_path.clone(),
                tables: if tables.is_empty() {
                    "none".to_string()
                } else {
                    tables.join(", ")
                },
            });
        }
        let version = version.flatten();
        let version_ok = version == Some(Some(schema::SCHEMA_VERSION));
        let alembic_ok = alembic.len() == 1 && alembic[0] == schema::ALEMBIC_VERSION;
        if !(version_ok && alembic_ok) {
            return Err(StoreError::SchemaVersion {
                storage: self.location(),
                found: format!(
                    "version {} (alembic {})",
                    version
                        .flatten()
                        .map_or_else(|| "missing".to_string(), |v| v.to_string()),
                    if alembic.is_empty() {
                        "missing".to_string()
                    } else {
                        alembic.join(", ")
                    }
                ),
            });
        }
        Ok(())
    }

    /// Switches the file to WAL mode (persistent); a failure leaves the rollback journal,
    /// which is slower under concurrency but equally safe.
    fn enable_wal(&self) {
        let Conn::Sqlite(conn) = &self.conn else {
            return;
        };
        for _ in 0..5 {
            let mode: Result<String, _> =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0));
            if matches!(mode, Ok(ref m) if m.eq_ignore_ascii_case("wal")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQLite's `PRAGMA integrity_check`; `Ok(())` when the file is sound (PostgreSQL
    /// keeps its own consistency: always `Ok(())` there).
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let Conn::Sqlite(conn) = &self.conn else {
            return Ok(());
        };
        let result: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.db_err(e.into()))?;
        if result == "ok" {
            Ok(())
        } else {
            Err(self.corrupt(format!("integrity check: {result}")))
        }
    }

    /// SQLite's journal mode in force (`wal` normally; `server` for PostgreSQL).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        let Conn::Sqlite(conn) = &self.conn else {
            return Ok("server".to_string());
        };
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.db_err(e.into()))
    }
}

/// Splits a stored `checkpoint_path` into the host that wrote it (server storages write
/// `host:/absolute/path`) and the path.
pub fn split_checkpoint_host(stored: &str) -> (Option<&str>, &str) {
    match stored.split_once(':') {
        Some((host, path))
            if !host.is_empty() && !host.contains(['/', '\\']) && path.starts_with('/') =>
        {
            (Some(host), path)
        }
        _ => (None, stored),
    }
}

/// `file:PATH?immutable=1`, with the characters a URI gives meaning to escaped.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for ch in path.to_string_lossy().chars() {
        match ch {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", ch as u32)),
            _ => uri.push(ch),
        }
    }
    uri.push_str("?immutable=1");
    uri
}
