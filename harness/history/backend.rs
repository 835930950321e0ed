//! The two stores a history lives in, behind one small interface: SQL text with `$n` parameters,
//! values of three kinds. SQLite (rusqlite, a file under `reports/`) and PostgreSQL
//! (tokio-postgres, shared by several CI machines) run the same statements.

use anyhow::{Context, Result, anyhow};
use tokio_postgres::types::ToSql;

/// A column or parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

/// The kind of a column read back.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int,
    Text,
    Bool,
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => *v,
            _ => None,
        }
    }

    pub fn text(&self) -> Option<String> {
        match self {
            Value::Text(v) => v.clone(),
            _ => None,
        }
    }

    pub fn boolean(&self) -> bool {
        matches!(self, Value::Bool(true))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_string()))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::Text(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

pub enum Backend {
    Sqlite(std::sync::Mutex<rusqlite::Connection>),
    Postgres(tokio_postgres::Client),
}

/// SQLite takes `?n` where PostgreSQL takes `$n`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Backend {
    pub fn sqlite(path: &std::path::Path) -> Result<Backend> {
        let con = rusqlite::Connection::open(path)
            .with_context(|| format!("open the history {}", path.display()))?;
        // Shards of one suite on one machine may record at the same moment.
        con.busy_timeout(std::time::Duration::from_secs(30))?;
        con.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Backend::Sqlite(std::sync::Mutex::new(con)))
    }

    pub async fn postgres(url: &str) -> Result<Backend> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| anyhow!("connect to the history database: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("history database connection: {e}");
            }
        });
        Ok(Backend::Postgres(client))
    }

    /// Statements without parameters, e.g. a migration.
    pub async fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Backend::Sqlite(con) => con.lock().expect("not poisoned").execute_batch(sql)?,
            Backend::Postgres(client) => client.batch_execute(sql).await?,
        }
        Ok(())
    }

    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<()> {
        match self {
            Backend::Sqlite(con) => {
                let con = con.lock().expect("not poisoned");
                let params = sqlite_params(params);
                con.execute(&sqlite_sql(sql), params.as_slice())?;
            }
            Backend::Postgres(client) => {
                client.execute(sql, &pg_params(params)).await?;
            }
        }
        Ok(())
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[Value],
        kinds: &[Kind],
    ) -> Result<Vec<Vec<Value>>> {
        match self {
            Backend::Sqlite(con) => {
                let con = con.lock().expect("not poisoned");
                let mut statement = con.prepare(&sqlite_sql(sql))?;
                let params = sqlite_params(params);
                let rows = statement.query_map(params.as_slice(), |row| {
                    kinds
                        .iter()
                        .enumerate()
                        .map(|(i, kind)| {
                            Ok(match kind {
                                Kind::Int => Value::Int(row.get(i)?),
                                Kind::Text => Value::Text(row.get(i)?),
                                Kind::Bool => Value::Bool(row.get(i)?),
                            })
                        })
                        .collect::<rusqlite::Result<Vec<Value>>>()
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            }
            Backend::Postgres(client) => {
                let rows = client.query(sql, &pg_params(params)).await?;
                rows.iter()
                    .map(|row| {
                        kinds
                            .iter()
                            .enumerate()
                            .map(|(i, kind)| {
                                Ok(match kind {
                                    Kind::Int => Value::Int(row.try_get(i)?),
                                    Kind::Text => Value::Text(row.try_get(i)?),
                                    Kind::Bool => Value::Bool(row.try_get(i)?),
                                })
                            })
                            .collect::<Result<Vec<Value>>>()
                    })
                    .collect()
            }
        }
    }
}

fn sqlite_params(params: &[Value]) -> Vec<&dyn rusqlite::ToSql> {
    params
        .iter()
        .map(|v| match v {
            Value::Int(i) => i as &dyn rusqlite::ToSql,
            Value::Text(t) => t as &dyn rusqlite::ToSql,
            Value::Bool(b) => b as &dyn rusqlite::ToSql,
        })
        .collect()
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|v| match v {
            Value::Int(i) => i as &(dyn ToSql + Sync),
            Value::Text(t) => t as &(dyn ToSql + Sync),
            Value::Bool(b) => b as &(dyn ToSql + Sync),
        })
        .collect()
}
