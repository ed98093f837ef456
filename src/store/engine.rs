//! The two database engines behind [`Store`]: connections, transactions (with PostgreSQL's
//! reconnect and conflict retries), the one value type both engines bind and read, and every
//! piece of SQL that differs between SQLite and PostgreSQL.
//!
//! The store's queries are written once, in the SQL both engines share, with `?N` placeholders
//! and `FOR UPDATE` where a PostgreSQL transaction must lock the rows it reads (SQLite's write
//! transactions lock the whole file up front, so the clause is dropped there). Everything else
//! that differs (placeholder syntax, listing tables, the DDL, the schema-creation lock, the
//! transaction kinds) is in this file or in [`super::schema`].

use super::storage::PostgresTarget;
use super::time::{format_micros, parse_utc};
use super::{Store, StoreError, schema};
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};

/// How long a PostgreSQL store keeps trying to reconnect after losing its server before it
/// gives up with [`StoreError::ConnectionLost`].
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Longest pause between two reconnection attempts (the pause doubles from 250 ms).
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// How often a transaction that lost a lock conflict (deadlock, serialisation failure, a
/// concurrent insert of the same unique key) is run again before its error is returned.
const CONFLICT_RETRIES: usize = 20;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A store's open connection.
pub(super) enum Conn {
    /// An SQLite file.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server (queries need `&mut`; a `Store` is used by one thread).
    Postgres(Box<RefCell<Pg>>),
}

/// A PostgreSQL connection with what it needs to reconnect and its prepared statements.
pub(super) struct Pg {
    client: postgres::Client,
    target: PostgresTarget,
    statements: HashMap<String, postgres::Statement>,
}

impl Pg {
    /// Connects to the server (no TLS).
    pub(super) fn connect(target: &PostgresTarget) -> Result<Pg, postgres::Error> {
        let mut config = target.config.clone();
        config
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(60))
            .application_name("cthpo");
        Ok(Pg {
            client: config.connect(postgres::NoTls)?,
            target: target.clone(),
            statements: HashMap::new(),
        })
    }
}

/// A value bound to, or read from, a query.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Sql {
    /// SQL NULL.
    Null,
    /// An integer (any width; PostgreSQL columns take it as their own width).
    Int(i64),
    /// A float.
    Float(f64),
    /// Text; also timestamps (naive UTC text) and PostgreSQL enum labels.
    Text(String),
}

impl From<i64> for Sql {
    fn from(value: i64) -> Sql {
        Sql::Int(value)
    }
}

impl From<f64> for Sql {
    fn from(value: f64) -> Sql {
        Sql::Float(value)
    }
}

impl From<&str> for Sql {
    fn from(value: &str) -> Sql {
        Sql::Text(value.to_string())
    }
}

impl From<String> for Sql {
    fn from(value: String) -> Sql {
        Sql::Text(value)
    }
}

impl<T: Into<Sql>> From<Option<T>> for Sql {
    fn from(value: Option<T>) -> Sql {
        value.map_or(Sql::Null, Into::into)
    }
}

/// Failures below the store's error type.
#[derive(Debug)]
pub(super) enum DbError {
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// PostgreSQL failed.
    Postgres(postgres::Error),
    /// A column held another type than the query expects.
    Type(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sqlite(e)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        DbError::Postgres(e)
    }
}

/// One result row.
pub(super) struct Row(Vec<Sql>);

impl Row {
    fn get(&self, i: usize) -> Result<&Sql, DbError> {
        self.0
            .get(i)
            .ok_or_else(|| DbError::Type(format!("no column {i}")))
    }

    fn mismatch(&self, i: usize, expected: &str) -> DbError {
        DbError::Type(format!(
            "column {i}: expected {expected}, found {:?}",
            self.0.get(i)
        ))
    }

    /// An integer column that may be NULL.
    pub(super) fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.get(i)? {
            Sql::Null => Ok(None),
            Sql::Int(v) => Ok(Some(*v)),
            _ => Err(self.mismatch(i, "an integer")),
        }
    }

    /// An integer column.
    pub(super) fn int(&self, i: usize) -> Result<i64, DbError> {
        self.opt_int(i)?
            .ok_or_else(|| self.mismatch(i, "an integer"))
    }

    /// A float column that may be NULL (integers are read as floats).
    pub(super) fn opt_float(&self, i: usize) -> Result<Option<f64>, DbError> {
        match self.get(i)? {
            Sql::Null => Ok(None),
            Sql::Float(v) => Ok(Some(*v)),
            Sql::Int(v) => Ok(Some(*v as f64)),
            _ => Err(self.mismatch(i, "a number")),
        }
    }

    /// A text column that may be NULL.
    pub(super) fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.get(i)? {
            Sql::Null => Ok(None),
            Sql::Text(v) => Ok(Some(v.clone())),
            _ => Err(self.mismatch(i, "text")),
        }
    }

    /// A text column.
    pub(super) fn text(&self, i: usize) -> Result<String, DbError> {
        self.opt_text(i)?.ok_or_else(|| self.mismatch(i, "text"))
    }
}

/// An open transaction of either engine.
pub(super) enum Tx<'a> {
    /// SQLite (the transaction was begun on this connection).
    Sqlite(&'a rusqlite::Connection),
    /// PostgreSQL, with the connection's prepared statements.
    Postgres {
        /// The transaction.
        tx: postgres::Transaction<'a>,
        /// Prepared statements by SQL text.
        statements: &'a mut HashMap<String, postgres::Statement>,
    },
}

/// SQLite's text of a shared query: row locks are implied by its write transactions.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    if sql.contains(" FOR UPDATE") {
        Cow::Owned(sql.replace(" FOR UPDATE", ""))
    } else {
        Cow::Borrowed(sql)
    }
}

/// PostgreSQL's text of a shared query: `?N` placeholders become `$N`.
fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl Tx<'_> {
    /// Runs a query and returns all its rows.
    pub(super) fn query(&mut self, sql: &str, params: &[Sql]) -> Result<Vec<Row>, DbError> {
        match self {
            Tx::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(&sqlite_sql(sql))?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(match row.get_ref(i)? {
                            ValueRef::Null => Sql::Null,
                            ValueRef::Integer(v) => Sql::Int(v),
                            ValueRef::Real(v) => Sql::Float(v),
                            ValueRef::Text(t) => Sql::Text(String::from_utf8_lossy(t).into_owned()),
                            ValueRef::Blob(_) => {
                                return Err(DbError::Type(format!("column {i} is a blob")));
                            }
                        });
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Tx::Postgres { tx, statements } => {
                let statement = prepared(tx, statements, sql)?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                let rows = tx.query(&statement, &refs)?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| row.try_get::<_, Sql>(i).map_err(DbError::Postgres))
                            .collect::<Result<Vec<_>, _>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    }

    /// Runs a query and returns its first row, if any.
    pub(super) fn query_opt(&mut self, sql: &str, params: &[Sql]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs a statement and returns the number of rows it changed.
    pub(super) fn execute(&mut self, sql: &str, params: &[Sql]) -> Result<u64, DbError> {
        match self {
            Tx::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(&sqlite_sql(sql))?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Tx::Postgres { tx, statements } => {
                let statement = prepared(tx, statements, sql)?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                Ok(tx.execute(&statement, &refs)?)
            }
        }
    }

    /// The tables of the database, by name.
    pub(super) fn table_names(&mut self) -> Result<Vec<String>, DbError> {
        let sql = match self {
            Tx::Sqlite(_) => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            Tx::Postgres { .. } => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY table_name"
            }
        };
        self.query(sql, &[])?.iter().map(|r| r.text(0)).collect()
    }

    /// Serialises schema creation between processes (SQLite's write transaction already does).
    pub(super) fn lock_schema(&mut self) -> Result<(), DbError> {
        if let Tx::Postgres { tx, .. } = self {
            // An arbitrary key of our own ("cthpo" in ASCII).
            tx.execute("SELECT pg_advisory_xact_lock(426510553199)", &[])?;
        }
        Ok(())
    }

    /// Creates Optuna's schema in this engine's dialect.
    pub(super) fn create_schema(&mut self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(conn) => conn.execute_batch(schema::DDL)?,
            Tx::Postgres { tx, .. } => tx.batch_execute(schema::POSTGRES_DDL)?,
        }
        Ok(())
    }
}

/// The prepared statement for a shared query, prepared once per connection.
fn prepared(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, DbError> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(&postgres_sql(sql))?;
    statements.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

impl rusqlite::ToSql for Sql {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Sql::Null => ValueRef::Null,
            Sql::Int(v) => ValueRef::Integer(*v),
            Sql::Float(v) => ValueRef::Real(*v),
            Sql::Text(v) => ValueRef::Text(v.as_bytes()),
        }))
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Sql {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Sql::Null, _) => Ok(IsNull::Yes),
            (Sql::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Sql::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Sql::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Sql::Int(v), &Type::FLOAT8) => (*v as f64).to_sql(ty, out),
            (Sql::Float(v), &Type::FLOAT8) => v.to_sql(ty, out),
            (Sql::Float(v), &Type::FLOAT4) => (*v as f32).to_sql(ty, out),
            (Sql::Text(v), &Type::TIMESTAMP) => {
                let micros = parse_utc(v).ok_or_else(|| format!("not a UTC time: {v:?}"))?;
                (micros - PG_EPOCH_MICROS).to_sql(&Type::INT8, out)
            }
            (Sql::Text(v), ty) if !matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8) => {
                // Text, varchar and enum labels are all sent as their UTF-8 text.
                v.as_str().to_sql(&Type::TEXT, out)
            }
            (value, ty) => Err(format!("cannot send {value:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Sql {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Sql, BoxError> {
        Ok(match *ty {
            Type::INT2 => Sql::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Sql::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Sql::Int(i64::from_sql(ty, raw)?),
            Type::FLOAT4 => Sql::Float(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Sql::Float(f64::from_sql(ty, raw)?),
            Type::BOOL => Sql::Int(bool::from_sql(ty, raw)?.into()),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => Sql::Text(format_micros(
                i64::from_sql(&Type::INT8, raw)? + PG_EPOCH_MICROS,
            )),
            _ => Sql::Text(std::str::from_utf8(raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Sql, BoxError> {
        Ok(Sql::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// True for PostgreSQL errors that running the transaction again resolves.
fn is_conflict(error: &StoreError) -> bool {
    let StoreError::Postgres { error, .. } = error else {
        return false;
    };
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::UNIQUE_VIOLATION
    )
}

impl Store {
    /// The store's error for an engine failure.
    pub(super) fn db_err(&self, error: DbError) -> StoreError {
        match error {
            DbError::Sqlite(source) => {
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
                    StoreError::NotADatabase {
                        path: self.db_path.clone(),
                    }
                } else {
                    StoreError::Sqlite {
                        path: self.db_path.clone(),
                        source,
                    }
                }
            }
            DbError::Postgres(error) => StoreError::Postgres {
                location: self.location(),
                error,
            },
            DbError::Type(what) => self.corrupt(what),
        }
    }

    /// The first column of a query's first row as an integer (`None` when there is no row).
    pub(super) fn query_int(
        &self,
        tx: &mut Tx<'_>,
        sql: &str,
        params: &[Sql],
    ) -> Result<Option<i64>, StoreError> {
        let e = |err| self.db_err(err);
        tx.query_opt(sql, params)
            .map_err(e)?
            .map(|r| r.int(0))
            .transpose()
            .map_err(e)
    }

    /// Runs `f` in a write transaction (SQLite: the write lock taken up front; PostgreSQL:
    /// read committed, rows locked by `FOR UPDATE`) and commits it.
    pub(super) fn write<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(true, f)
    }

    /// Runs `f` in a read transaction: one consistent snapshot for several queries.
    pub(super) fn read<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(false, f)
    }

    fn transact<T>(
        &self,
        write: bool,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let cell = match &self.conn {
            Conn::Sqlite(conn) => {
                let behavior = if write {
                    rusqlite::TransactionBehavior::Immediate
                } else {
                    rusqlite::TransactionBehavior::Deferred
                };
                let tx = rusqlite::Transaction::new_unchecked(conn, behavior)
                    .map_err(|e| self.db_err(e.into()))?;
                let value = f(&mut Tx::Sqlite(&tx))?;
                tx.commit().map_err(|e| self.db_err(e.into()))?;
                return Ok(value);
            }
            Conn::Postgres(cell) => cell,
        };
        let mut pg = cell.borrow_mut();
        let mut conflicts = 0;
        let mut lost_since: Option<Instant> = None;
        loop {
            let result = self.attempt(&mut pg, write, &mut f);
            match result {
                Ok(value) => return Ok(value),
                Err(error) if pg.client.is_closed() => {
                    // The server went away: reconnect (bounded) and run the transaction again;
                    // it was rolled back with the connection.
                    let since = *lost_since.get_or_insert_with(Instant::now);
                    self.reconnect(&mut pg, since, error)?;
                }
                Err(error) if is_conflict(&error) && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    std::thread::sleep(Duration::from_millis(5 * conflicts as u64));
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn attempt<T>(
        &self,
        pg: &mut Pg,
        write: bool,
        f: &mut impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Pg {
            client, statements, ..
        } = pg;
        let mut builder = client.build_transaction();
        if !write {
            builder = builder
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true);
        }
        let tx = builder.start().map_err(|e| self.db_err(e.into()))?;
        let mut tx = Tx::Postgres { tx, statements };
        let value = f(&mut tx)?;
        if let Tx::Postgres { tx, .. } = tx {
            tx.commit().map_err(|e| self.db_err(e.into()))?;
        }
        Ok(value)
    }

    /// Reconnects with doubling pauses until [`RECONNECT_FOR`] has passed since the loss.
    fn reconnect(&self, pg: &mut Pg, since: Instant, cause: StoreError) -> Result<(), StoreError> {
        let mut pause = Duration::from_millis(250);
        let mut last = cause;
        loop {
            if since.elapsed() >= RECONNECT_FOR {
                return Err(StoreError::ConnectionLost {
                    location: self.location(),
                    waited: since.elapsed().as_secs(),
                    source: Box::new(last),
                });
            }
            std::thread::sleep(pause.min(RECONNECT_FOR.saturating_sub(since.elapsed())));
            pause = (pause * 2).min(MAX_BACKOFF);
            match Pg::connect(&pg.target) {
                Ok(fresh) => {
                    *pg = fresh;
                    return Ok(());
                }
                Err(e) => last = self.db_err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sql_becomes_each_dialect() {
        assert_eq!(
            postgres_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12 FOR UPDATE"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 FOR UPDATE"
        );
        assert_eq!(
            sqlite_sql("SELECT a FROM t WHERE b = ?1 FOR UPDATE"),
            "SELECT a FROM t WHERE b = ?1"
        );
    }
}
