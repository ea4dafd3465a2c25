//! The store's scenarios (`tests/store_scenarios/`) on SQLite, the default database: each in a
//! new database file in a temporary directory. `tests/postgres.rs` runs the same scenarios on
//! PostgreSQL.

#[macro_use]
mod store_scenarios;

/// A new SQLite database: its URL, and the directory that holds it (removed when dropped).
struct Sqlite {
    url: String,
    _dir: tempfile::TempDir,
}

impl AsRef<str> for Sqlite {
    fn as_ref(&self) -> &str {
        &self.url
    }
}

fn database() -> Option<Sqlite> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    Some(Sqlite { url, _dir: dir })
}

store_scenarios!(database());
