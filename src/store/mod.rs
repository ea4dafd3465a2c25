//! Persistence of executions and steps through `sqlx::AnyPool`: SQLite by default, PostgreSQL
//! for several nodes. Portable SQL only (TEXT timestamps in RFC 3339, `$n` placeholders).
//!
//! A step is written before the effect it leads to runs, so a crash loses nothing that was
//! already decided. `active_key` is unique while an execution is active: it is what stops two
//! nodes from starting a second execution for the same session.

// Column lists as macros, so every statement stays a static string (no SQL built at run time);
// defined before the submodules so they can use them too.
macro_rules! execution_columns {
    () => {
        "sid, flow_sid, contact, status, context, state, active_key, wait_until, date_created, date_updated"
    };
}
macro_rules! revision_columns {
    () => {
        "flow_sid, revision, friendly_name, definition, status, commit_message, valid, errors, warnings, date_created, date_updated"
    };
}

mod catalog;
mod disk;
mod numbers;
mod retention;

pub use catalog::{ExecutionFilter, FlowRecord, RevisionRecord};
pub use numbers::NumberRecord;
pub use retention::Swept;

use std::sync::Arc;

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A progress write (execution state and steps) was not committed.
    #[error("database write failed: {0}")]
    Write(String),
    /// The group-commit writer task is gone.
    #[error("the database writer has stopped")]
    Closed,
    /// The database could not be opened.
    /// `reason` is the driver's message with the URL's secrets scrubbed from it.
    #[error("database {url}: {reason}")]
    Open {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// Another active execution holds the session key (the key).
    #[error("an active execution already exists for {0}")]
    ActiveExists(String),
    /// A stored JSON column does not parse.
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
}

/// One execution as stored (the `executions` table).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    /// Execution SID (`FN…`).
    pub sid: String,
    /// Flow SID (`FW…`).
    pub flow_sid: String,
    /// The contact's address (caller, message sender, REST `To`).
    pub contact: String,
    /// `active` or `ended`.
    pub status: String,
    /// The Studio execution context.
    pub context: Value,
    /// The engine's serialized execution state (where it waits, counters).
    pub state: Value,
    /// The session key, unique among active executions (None once ended, and for executions
    /// that hold no session, such as subflows).
    pub active_key: Option<String>,
    /// When a waiting execution times out (RFC 3339); None unless it waits for a reply.
    pub wait_until: Option<String>,
    /// Creation time (RFC 3339 UTC).
    pub date_created: String,
    /// Last update (RFC 3339 UTC).
    pub date_updated: String,
}

/// One step of an execution as stored (the `steps` table): a widget that finished.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Step SID (`FT…`).
    pub sid: String,
    /// The execution it belongs to.
    pub execution_sid: String,
    /// The widget that finished.
    pub name: String,
    /// The widget the transition leaves.
    pub transitioned_from: String,
    /// The next widget, or `Ended` when the execution ended there.
    pub transitioned_to: String,
    /// The event the widget took.
    pub event: String,
    /// The execution context after the step.
    pub context: Value,
    /// Why the widget failed, when it did.
    pub error: Option<String>,
    /// When the step was taken (RFC 3339 UTC).
    pub date_created: String,
}

/// The store: a connection pool and the group-commit writer. Cheap to clone (one per task).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Progress writes go through one writer task that commits whatever has queued up in one
    /// transaction (group commit): under load, SQLite does one commit for many calls' steps.
    writer: tokio::sync::mpsc::Sender<ProgressWrite>,
    /// This gateway process's node id: written with every execution it creates or advances,
    /// so after a crash it can end exactly the executions that were running in it.
    node: Option<Arc<str>>,
    /// Whether the store takes writes: [`Health`] as a number, set by failed writes and by the
    /// probe (see [`Store::watch_health`]).
    health: Arc<std::sync::atomic::AtomicU8>,
}

/// Whether the store can keep what a new call or execution decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Writes succeed.
    Available,
    /// The database refused the latest write or probe (stopped, unreachable, unwritable, full).
    DatabaseUnavailable,
    /// The data directory's file system has less free space than `[database] min_free_mb`:
    /// new calls are refused before a write or a recording fails half-way.
    DiskLow,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Available,
            1 => Health::DatabaseUnavailable,
            _ => Health::DiskLow,
        }
    }

    /// A short phrase for `/healthz` and the log.
    pub fn describe(self) -> &'static str {
        match self {
            Health::Available => "ok",
            Health::DatabaseUnavailable => "database unavailable",
            Health::DiskLow => "data directory low on disk space",
        }
    }
}

/// The free-space floor the health probe keeps for the data directory.
#[derive(Debug, Clone)]
pub struct DiskFloor {
    /// The data directory.
    pub dir: std::path::PathBuf,
    /// Free bytes below which the store reports [`Health::DiskLow`].
    pub min_free_bytes: u64,
}

/// One execution's progress, serialised and ready to bind.
struct Progress {
    sid: String,
    status: String,
    context: String,
    state: String,
    active_key: Option<String>,
    wait_until: Option<String>,
    date_updated: String,
    node: Option<Arc<str>>,
    steps: Vec<PreparedStep>,
}

struct PreparedStep {
    sid: String,
    execution_sid: String,
    name: String,
    from: String,
    to: String,
    event: String,
    context: String,
    error: Option<String>,
    date_created: String,
}

struct ProgressWrite {
    progress: Progress,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Most progress writes committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// A column added after its table's first release, added to databases made before it.
struct AddedColumn {
    table: &'static str,
    column: &'static str,
    /// SQLite: how many columns of that name the table has (0 or 1).
    sqlite_count: &'static str,
    sqlite_add: &'static str,
    postgres_add: &'static str,
}

const ADDED_COLUMNS: &[AddedColumn] = &[AddedColumn {
    table: "executions",
    column: "node",
    sqlite_count: "SELECT COUNT(*) FROM pragma_table_info('executions') WHERE name = 'node'",
    sqlite_add: "ALTER TABLE executions ADD COLUMN node TEXT",
    postgres_add: "ALTER TABLE executions ADD COLUMN IF NOT EXISTS node TEXT",
}];

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS executions (
        sid TEXT PRIMARY KEY,
        flow_sid TEXT NOT NULL,
        contact TEXT NOT NULL,
        status TEXT NOT NULL,
        context TEXT NOT NULL,
        state TEXT NOT NULL,
        active_key TEXT UNIQUE,
        wait_until TEXT,
        date_created TEXT NOT NULL,
        date_updated TEXT NOT NULL,
        node TEXT)",
    "CREATE INDEX IF NOT EXISTS executions_flow ON executions (flow_sid, date_created)",
    "CREATE INDEX IF NOT EXISTS executions_wait ON executions (wait_until)",
    "CREATE TABLE IF NOT EXISTS steps (
        sid TEXT PRIMARY KEY,
        execution_sid TEXT NOT NULL,
        name TEXT NOT NULL,
        transitioned_from TEXT NOT NULL,
        transitioned_to TEXT NOT NULL,
        event TEXT NOT NULL,
        context TEXT NOT NULL,
        error TEXT,
        date_created TEXT NOT NULL,
        seq BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS steps_execution ON steps (execution_sid, seq)",
    "CREATE TABLE IF NOT EXISTS flows (
        sid TEXT PRIMARY KEY,
        friendly_name TEXT NOT NULL,
        status TEXT NOT NULL,
        revision BIGINT NOT NULL,
        date_created TEXT NOT NULL,
        date_updated TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS flow_revisions (
        flow_sid TEXT NOT NULL,
        revision BIGINT NOT NULL,
        friendly_name TEXT NOT NULL,
        definition TEXT NOT NULL,
        status TEXT NOT NULL,
        commit_message TEXT,
        valid BIGINT NOT NULL,
        errors TEXT NOT NULL,
        warnings TEXT NOT NULL,
        date_created TEXT NOT NULL,
        date_updated TEXT NOT NULL,
        PRIMARY KEY (flow_sid, revision))",
    // Inbound messages already delivered, by provider message SID: a provider's retry or a
    // replayed signed webhook must not run the flow (and send paid replies) again.
    "CREATE TABLE IF NOT EXISTS inbound_messages (
        message_sid TEXT PRIMARY KEY,
        date_created TEXT NOT NULL)",
    // Each node writes its row every second: the write that tells it the database is back.
    "CREATE TABLE IF NOT EXISTS nodes (
        node TEXT PRIMARY KEY,
        seen TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS test_users (
        flow_sid TEXT NOT NULL,
        address TEXT NOT NULL,
        PRIMARY KEY (flow_sid, address))",
    // A parent execution waiting while its run-subflow child waits for a reply: the reply
    // (or the timeout) resumes the child first.
    "CREATE TABLE IF NOT EXISTS subflow_waits (
        parent_sid TEXT PRIMARY KEY,
        child_sid TEXT NOT NULL)",
    // Numbers attached to flows through the IncomingPhoneNumbers API.
    "CREATE TABLE IF NOT EXISTS phone_numbers (
        sid TEXT PRIMARY KEY,
        phone_number TEXT NOT NULL UNIQUE,
        friendly_name TEXT NOT NULL,
        voice_url TEXT NOT NULL,
        voice_method TEXT NOT NULL,
        sms_url TEXT NOT NULL,
        sms_method TEXT NOT NULL,
        date_created TEXT NOT NULL,
        date_updated TEXT NOT NULL)",
];

/// Now, as the store writes times: RFC 3339 UTC with milliseconds (they compare as text).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Twilio-style SID: two-letter prefix and 32 hex digits.
pub fn new_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

impl Store {
    /// Open (and create, or bring up to date, the schema of) the database at `url`:
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/db`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .map(|p| p.split('?').next().unwrap_or(p))
        {
            if let Some(dir) = std::path::Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        // A database that cannot be reached at start is an error within seconds, not half a
        // minute of silence.
        let opts = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(10));
        let opts = if sqlite {
            opts.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers (the API) run while calls write steps; a busy timeout
                    // makes concurrent writers wait instead of failing.
                    sqlx::query("PRAGMA journal_mode=WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout=5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous=NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        } else {
            opts
        };
        let pool = opts.connect(url).await.map_err(|source| StoreError::Open {
            url: redact(url),
            reason: crate::redact::scrub(&source.to_string(), url),
        })?;
        if sqlite {
            for stmt in SCHEMA {
                sqlx::query(*stmt).execute(&pool).await?;
            }
            for c in ADDED_COLUMNS {
                let n: i64 = sqlx::query(c.sqlite_count)
                    .fetch_one(&pool)
                    .await?
                    .try_get(0)?;
                if n == 0 {
                    sqlx::query(c.sqlite_add).execute(&pool).await?;
                }
            }
        } else {
            // PostgreSQL: nodes starting together would race on `CREATE ... IF NOT EXISTS`
            // (it can fail with a duplicate key in the catalog); one creates, the others wait.
            // A node joining a running cluster finds the schema complete and runs no DDL at all:
            // DDL takes table locks that can deadlock with other nodes' writes.
            let tables: Vec<&str> = SCHEMA
                .iter()
                .filter_map(|s| s.trim_start().strip_prefix("CREATE TABLE IF NOT EXISTS "))
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            let mut attempt = 0;
            loop {
                if postgres_schema_complete(&pool, &tables).await? {
                    break;
                }
                match create_postgres_schema(&pool).await {
                    Ok(()) => break,
                    // 40P01 deadlock / 40001 serialization failure: another node's DDL or
                    // writes crossed ours; try again.
                    Err(sqlx::Error::Database(d))
                        if attempt < 5
                            && matches!(d.code().as_deref(), Some("40P01") | Some("40001")) =>
                    {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (writer, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(write_progress(pool.clone(), rx));
        Ok(Store {
            pool,
            writer,
            node: None,
            health: Arc::new(std::sync::atomic::AtomicU8::new(Health::Available as u8)),
        })
    }

    /// Whether the store took the latest write or probe: new calls are refused while it does
    /// not, rather than answered and then dropped.
    pub fn is_available(&self) -> bool {
        self.health() == Health::Available
    }

    /// Whether the store takes writes, and if not why.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn set_health(&self, now: Health) {
        let was = Health::from_u8(
            self.health
                .swap(now as u8, std::sync::atomic::Ordering::Relaxed),
        );
        if was != now {
            match now {
                Health::Available => tracing::info!(was = was.describe(), "store available again"),
                _ => tracing::error!(
                    reason = now.describe(),
                    "store unavailable: new calls get 503 until it is back"
                ),
            }
        }
    }

    fn set_available(&self, up: bool) {
        self.set_health(if up {
            Health::Available
        } else {
            Health::DatabaseUnavailable
        });
    }

    /// Probe the database with a small write every `period` (this node's row in `nodes`), so an
    /// outage is noticed before a call needs it and the recovery as soon as it happens; and,
    /// with a `floor`, the free space of the data directory's file system (SQLite can go on
    /// overwriting pages it already has on a full disk, so a full disk is checked, not waited
    /// for as a failed write).
    pub fn watch_health(
        &self,
        period: std::time::Duration,
        floor: Option<DiskFloor>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let node = store.node.as_deref().unwrap_or("standalone").to_string();
            // A probe that errors means the database refuses writes: unavailable at once. One
            // that is only slow (a busy machine, a long group commit) must be slow three times
            // running before calls are refused for it.
            let mut slow = 0u32;
            loop {
                let low = floor.as_ref().and_then(|f| {
                    let free = disk::free_bytes(&f.dir).ok()?;
                    (free < f.min_free_bytes).then_some(free)
                });
                let health = if low.is_some() {
                    Health::DiskLow
                } else {
                    let probe = sqlx::query("INSERT INTO nodes (node, seen) VALUES ($1, $2) ON CONFLICT (node) DO UPDATE SET seen = $2")
                        .bind(&node)
                        .bind(now_rfc3339())
                        .execute(&store.pool);
                    match tokio::time::timeout(period.max(std::time::Duration::from_secs(1)), probe)
                        .await
                    {
                        Ok(Ok(_)) => {
                            slow = 0;
                            Health::Available
                        }
                        Ok(Err(_)) => Health::DatabaseUnavailable,
                        Err(_) => {
                            slow += 1;
                            if slow >= 3 {
                                Health::DatabaseUnavailable
                            } else {
                                store.health()
                            }
                        }
                    }
                };
                if let (Some(free), true) = (low, store.health() != Health::DiskLow) {
                    tracing::warn!(
                        free_bytes = free,
                        "data directory below its free-space floor"
                    );
                }
                store.set_health(health);
                tokio::time::sleep(period).await;
            }
        })
    }

    /// The same store, writing `node` as the node that runs the executions it creates or
    /// advances (see [`Store::end_orphans`]).
    pub fn on_node(mut self, node: &str) -> Store {
        self.node = Some(Arc::from(node));
        self
    }

    /// After a crash: end every execution that was running (active, not waiting for a reply) in
    /// this node's previous process. Those were calls, REST executions or conversations in the
    /// middle of a step; what they had decided is stored, but nothing can carry them on.
    /// Returns them as they were.
    pub async fn end_orphans(
        &self,
        now: &str,
        reason: &str,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        let Some(node) = self.node.as_deref() else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE status = 'active' AND wait_until IS NULL AND node = $1"
        ))
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        self.end_rows(&rows, now, Some(reason)).await
    }

    /// End each active execution of `rows` from outside (its state marked ended, with
    /// `end_reason` when given); returns those that were still active, as they were.
    pub(crate) async fn end_rows(
        &self,
        rows: &[AnyRow],
        now: &str,
        reason: Option<&str>,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        let mut ended = Vec::new();
        for r in rows {
            let e = execution_from(r)?;
            let mut state = e.state.clone();
            if let Some(o) = state.as_object_mut() {
                o.insert("status".into(), Value::String("ended".into()));
                o.insert("current".into(), Value::Null);
                if let Some(reason) = reason {
                    o.insert("end_reason".into(), Value::String(reason.into()));
                }
            }
            if self.end_execution(&e.sid, &state, now).await? {
                ended.push(e);
            }
        }
        Ok(ended)
    }

    /// Claim the delivery of inbound message `message_sid`: true the first time, false for a
    /// repeat (any node; claims older than the retention window are swept).
    pub async fn claim_inbound_message(&self, message_sid: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO inbound_messages (message_sid, date_created) VALUES ($1, $2) ON CONFLICT (message_sid) DO NOTHING",
        )
        .bind(message_sid)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Give a claim back (the delivery failed and the provider will retry).
    pub async fn release_inbound_message(&self, message_sid: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM inbound_messages WHERE message_sid = $1")
            .bind(message_sid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forget delivery claims made before `before` (RFC 3339 UTC).
    pub async fn sweep_inbound_messages(&self, before: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM inbound_messages WHERE date_created < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Insert a new execution; [`StoreError::ActiveExists`] when its session key is held.
    pub async fn create_execution(&self, e: &ExecutionRecord) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO executions (sid, flow_sid, contact, status, context, state, active_key, wait_until, date_created, date_updated, node)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&e.sid)
        .bind(&e.flow_sid)
        .bind(&e.contact)
        .bind(&e.status)
        .bind(e.context.to_string())
        .bind(e.state.to_string())
        .bind(e.active_key.clone())
        .bind(e.wait_until.clone())
        .bind(&e.date_created)
        .bind(&e.date_updated)
        .bind(self.node.as_deref().map(str::to_string))
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Err(
                StoreError::ActiveExists(e.active_key.clone().unwrap_or_default()),
            ),
            Err(err) => {
                self.set_available(false);
                Err(err.into())
            }
        }
    }

    /// Save the execution's state and append the steps it took, in one transaction (shared with
    /// other executions' progress queued at the same moment); returns once committed.
    pub async fn record_progress(
        &self,
        e: &ExecutionRecord,
        steps: &[StepRecord],
    ) -> Result<(), StoreError> {
        let progress = Progress {
            sid: e.sid.clone(),
            status: e.status.clone(),
            context: e.context.to_string(),
            state: e.state.to_string(),
            active_key: if e.status == "active" {
                e.active_key.clone()
            } else {
                None
            },
            wait_until: e.wait_until.clone(),
            date_updated: e.date_updated.clone(),
            node: self.node.clone(),
            steps: steps
                .iter()
                .map(|s| PreparedStep {
                    sid: s.sid.clone(),
                    execution_sid: s.execution_sid.clone(),
                    name: s.name.clone(),
                    from: s.transitioned_from.clone(),
                    to: s.transitioned_to.clone(),
                    event: s.event.clone(),
                    context: s.context.to_string(),
                    error: s.error.clone(),
                    date_created: s.date_created.clone(),
                })
                .collect(),
        };
        let (done, rx) = tokio::sync::oneshot::channel();
        if self
            .writer
            .send(ProgressWrite { progress, done })
            .await
            .is_err()
        {
            return Err(StoreError::Closed);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.set_available(false);
                Err(StoreError::Write(e))
            }
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// The execution `sid`.
    pub async fn execution(&self, sid: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE sid = $1"
        ))
        .bind(sid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| execution_from(&r)).transpose()
    }

    /// The active execution holding a session key, if any.
    pub async fn active_for_key(&self, key: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE active_key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| execution_from(&r)).transpose()
    }

    /// Take a waiting execution for resuming: true for exactly one caller, across nodes, even
    /// when a reply and its timeout (or two replies) arrive at once.
    pub async fn claim_wait(&self, sid: &str, wait_until: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE executions SET wait_until = NULL WHERE sid = $1 AND wait_until = $2 AND status = 'active'")
            .bind(sid)
            .bind(wait_until)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record that `parent` waits for its run-subflow child `child`, which waits for a reply.
    pub async fn set_subflow_wait(&self, parent: &str, child: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subflow_waits WHERE parent_sid = $1")
            .bind(parent)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO subflow_waits (parent_sid, child_sid) VALUES ($1, $2)")
            .bind(parent)
            .bind(child)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The waiting child of `parent`, if it has one.
    pub async fn subflow_child(&self, parent: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT child_sid FROM subflow_waits WHERE parent_sid = $1")
            .bind(parent)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }

    /// `parent`'s child no longer waits.
    pub async fn clear_subflow_wait(&self, parent: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subflow_waits WHERE parent_sid = $1")
            .bind(parent)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Executions whose wait for a reply has run out by `now` (RFC 3339, UTC: compares as text).
    pub async fn due_waits(&self, now: &str) -> Result<Vec<ExecutionRecord>, StoreError> {
        // Children (no session key) are resumed through their parent.
        let rows = sqlx::query(concat!("SELECT ", execution_columns!(), " FROM executions WHERE wait_until IS NOT NULL AND wait_until <= $1 AND status = 'active' AND active_key IS NOT NULL ORDER BY wait_until"))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(execution_from).collect()
    }

    /// The earliest pending reply deadline, to know when to look again.
    pub async fn next_wait(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT MIN(wait_until) FROM executions WHERE wait_until IS NOT NULL AND status = 'active' AND active_key IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<String>, _>(0)?)
    }

    /// Every execution of a flow, oldest first.
    pub async fn executions_for_flow(
        &self,
        flow_sid: &str,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE flow_sid = $1 ORDER BY date_created"
        ))
        .bind(flow_sid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(execution_from).collect()
    }

    /// Every step of an execution, in the order taken.
    pub async fn steps(&self, execution_sid: &str) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query("SELECT sid, execution_sid, name, transitioned_from, transitioned_to, event, context, error, date_created FROM steps WHERE execution_sid = $1 ORDER BY seq")
            .bind(execution_sid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StepRecord {
                    sid: r.try_get(0)?,
                    execution_sid: r.try_get(1)?,
                    name: r.try_get(2)?,
                    transitioned_from: r.try_get(3)?,
                    transitioned_to: r.try_get(4)?,
                    event: r.try_get(5)?,
                    context: serde_json::from_str(&r.try_get::<String, _>(6)?)?,
                    error: r.try_get(7)?,
                    date_created: r.try_get(8)?,
                })
            })
            .collect()
    }
}

fn execution_from(r: &AnyRow) -> Result<ExecutionRecord, StoreError> {
    Ok(ExecutionRecord {
        sid: r.try_get(0)?,
        flow_sid: r.try_get(1)?,
        contact: r.try_get(2)?,
        status: r.try_get(3)?,
        context: serde_json::from_str(&r.try_get::<String, _>(4)?)?,
        state: serde_json::from_str(&r.try_get::<String, _>(5)?)?,
        active_key: r.try_get(6)?,
        wait_until: r.try_get(7)?,
        date_created: r.try_get(8)?,
        date_updated: r.try_get(9)?,
    })
}

/// A database URL without its password, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    crate::redact::url(url)
}

async fn postgres_schema_complete(pool: &AnyPool, tables: &[&str]) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ANY(string_to_array($1, ','))")
        .bind(tables.join(","))
        .fetch_one(pool)
        .await?;
    let n: i64 = row.try_get(0)?;
    if n as usize != tables.len() {
        return Ok(false);
    }
    for c in ADDED_COLUMNS {
        let row = sqlx::query("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2")
            .bind(c.table)
            .bind(c.column)
            .fetch_one(pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        if n == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn create_postgres_schema(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7361626974636862)")
        .execute(&mut *tx)
        .await?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&mut *tx).await?;
    }
    for c in ADDED_COLUMNS {
        sqlx::query(c.postgres_add).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The group-commit writer: take one write, add whatever else is already queued, commit them in
/// one transaction, answer each. A failed batch is retried write by write so one bad write
/// cannot fail the others.
async fn write_progress(pool: AnyPool, mut rx: tokio::sync::mpsc::Receiver<ProgressWrite>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let all: Vec<&Progress> = batch.iter().map(|w| &w.progress).collect();
        let started = std::time::Instant::now();
        let committed = commit(&pool, &all).await;
        crate::metrics::get()
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                for w in batch {
                    let _ = w.done.send(Ok(()));
                }
            }
            Err(_) if batch.len() > 1 => {
                for w in batch {
                    let r = commit(&pool, &[&w.progress])
                        .await
                        .map_err(|e| e.to_string());
                    let _ = w.done.send(r);
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.done.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn commit(pool: &AnyPool, all: &[&Progress]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for p in all {
        // An execution ended from outside (the REST API) stays ended: a runner that was still
        // driving it cannot make it active again.
        // The node that advances an execution runs it now (a reply may resume it anywhere).
        sqlx::query("UPDATE executions SET status = $1, context = $2, state = $3, active_key = $4, wait_until = $5, date_updated = $6, node = COALESCE($8, node) WHERE sid = $7 AND NOT (status = 'ended' AND $1 = 'active')")
            .bind(&p.status)
            .bind(&p.context)
            .bind(&p.state)
            .bind(p.active_key.clone())
            .bind(p.wait_until.clone())
            .bind(&p.date_updated)
            .bind(&p.sid)
            .bind(p.node.as_deref().map(str::to_string))
            .execute(&mut *tx)
            .await?;
        for s in &p.steps {
            sqlx::query(
                "INSERT INTO steps (sid, execution_sid, name, transitioned_from, transitioned_to, event, context, error, date_created, seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                         (SELECT COUNT(*) FROM steps WHERE execution_sid = $2))",
            )
            .bind(&s.sid)
            .bind(&s.execution_sid)
            .bind(&s.name)
            .bind(&s.from)
            .bind(&s.to)
            .bind(&s.event)
            .bind(&s.context)
            .bind(s.error.clone())
            .bind(&s.date_created)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://sb:secret@db:5432/sb"),
            "postgres://sb:***@db:5432/sb"
        );
        assert_eq!(redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }
}
