//! What the Studio REST API keeps: flows created through it, their revisions and test users,
//! and paged listings of executions and steps. Portable SQL only, like the rest of the store.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{execution_from, ExecutionRecord, StepRecord, Store, StoreError};

/// A flow created through the API (its definition lives in its revisions).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    /// Flow SID (`FW…`).
    pub sid: String,
    /// The latest revision's name.
    pub friendly_name: String,
    /// Status of the latest revision: `draft` or `published`.
    pub status: String,
    /// The latest revision number (1 for a new flow).
    pub revision: i64,
    /// Creation time (RFC 3339 UTC).
    pub date_created: String,
    /// Time of the latest revision (RFC 3339 UTC).
    pub date_updated: String,
}

/// One revision of a flow: every create and update makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    /// The flow's SID.
    pub flow_sid: String,
    /// The revision number, from 1.
    pub revision: i64,
    /// The flow's name in this revision.
    pub friendly_name: String,
    /// The definition as JSON text.
    pub definition: String,
    /// `draft` or `published`.
    pub status: String,
    /// The message given with the change.
    pub commit_message: Option<String>,
    /// Whether the definition validated (Studio's `valid`).
    pub valid: bool,
    /// Validation errors (a JSON array).
    pub errors: Value,
    /// Validation warnings (a JSON array).
    pub warnings: Value,
    /// Creation time (RFC 3339 UTC).
    pub date_created: String,
    /// Last update (RFC 3339 UTC).
    pub date_updated: String,
}

/// Which executions of a flow to list (dates in the store's RFC 3339 form; bounds inclusive).
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    /// Created at or after.
    pub created_from: Option<String>,
    /// Created at or before.
    pub created_to: Option<String>,
}

fn flow_from(r: &AnyRow) -> Result<FlowRecord, StoreError> {
    Ok(FlowRecord {
        sid: r.try_get(0)?,
        friendly_name: r.try_get(1)?,
        status: r.try_get(2)?,
        revision: r.try_get(3)?,
        date_created: r.try_get(4)?,
        date_updated: r.try_get(5)?,
    })
}

fn revision_from(r: &AnyRow) -> Result<RevisionRecord, StoreError> {
    Ok(RevisionRecord {
        flow_sid: r.try_get(0)?,
        revision: r.try_get(1)?,
        friendly_name: r.try_get(2)?,
        definition: r.try_get(3)?,
        status: r.try_get(4)?,
        commit_message: r.try_get(5)?,
        valid: r.try_get::<i64, _>(6)? != 0,
        errors: serde_json::from_str(&r.try_get::<String, _>(7)?)?,
        warnings: serde_json::from_str(&r.try_get::<String, _>(8)?)?,
        date_created: r.try_get(9)?,
        date_updated: r.try_get(10)?,
    })
}

fn step_from(r: &AnyRow) -> Result<StepRecord, StoreError> {
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
}

impl Store {
    /// Create a flow with its first revision (`rev.revision` is ignored: it is 1).
    pub async fn create_flow(&self, rev: &RevisionRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO flows (sid, friendly_name, status, revision, date_created, date_updated) VALUES ($1, $2, $3, 1, $4, $5)")
            .bind(&rev.flow_sid)
            .bind(&rev.friendly_name)
            .bind(&rev.status)
            .bind(&rev.date_created)
            .bind(&rev.date_updated)
            .execute(&mut *tx)
            .await?;
        insert_revision(&mut tx, rev, 1).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Add a revision to a flow (numbered one past its latest) and make it the flow's current
    /// state. Returns the new revision number, or None when the flow does not exist.
    pub async fn add_revision(&self, rev: &RevisionRecord) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let latest: Option<i64> = sqlx::query("SELECT revision FROM flows WHERE sid = $1")
            .bind(&rev.flow_sid)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let Some(latest) = latest else {
            return Ok(None);
        };
        let n = latest + 1;
        insert_revision(&mut tx, rev, n).await?;
        sqlx::query("UPDATE flows SET friendly_name = $1, status = $2, revision = $3, date_updated = $4 WHERE sid = $5")
            .bind(&rev.friendly_name)
            .bind(&rev.status)
            .bind(n)
            .bind(&rev.date_updated)
            .bind(&rev.flow_sid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(n))
    }

    /// The flow `sid`.
    pub async fn flow(&self, sid: &str) -> Result<Option<FlowRecord>, StoreError> {
        let row = sqlx::query("SELECT sid, friendly_name, status, revision, date_created, date_updated FROM flows WHERE sid = $1")
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| flow_from(&r)).transpose()
    }

    /// Flows, oldest first: at most `limit` from `offset`.
    pub async fn flows(&self, offset: i64, limit: i64) -> Result<Vec<FlowRecord>, StoreError> {
        let rows = sqlx::query("SELECT sid, friendly_name, status, revision, date_created, date_updated FROM flows ORDER BY date_created, sid LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(flow_from).collect()
    }

    /// Every stored flow's SID (to load them at start-up).
    pub async fn flow_sids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT sid FROM flows ORDER BY date_created, sid")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Delete a flow, its revisions and test users. Returns whether it existed.
    pub async fn delete_flow(&self, sid: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM flows WHERE sid = $1")
            .bind(sid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for stmt in [
            "DELETE FROM flow_revisions WHERE flow_sid = $1",
            "DELETE FROM test_users WHERE flow_sid = $1",
        ] {
            sqlx::query(stmt).bind(sid).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// One revision of a flow.
    pub async fn revision(
        &self,
        flow_sid: &str,
        revision: i64,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            revision_columns!(),
            " FROM flow_revisions WHERE flow_sid = $1 AND revision = $2"
        ))
        .bind(flow_sid)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| revision_from(&r)).transpose()
    }

    /// The revision a flow runs: the latest published, else the latest draft.
    pub async fn runnable_revision(&self, sid: &str) -> Result<Option<RevisionRecord>, StoreError> {
        match self.latest_revision(sid, true).await? {
            Some(r) => Ok(Some(r)),
            None => self.latest_revision(sid, false).await,
        }
    }

    /// The newest revision, or the newest published one.
    pub async fn latest_revision(
        &self,
        flow_sid: &str,
        published_only: bool,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        let stmt = if published_only {
            concat!(
                "SELECT ",
                revision_columns!(),
                " FROM flow_revisions WHERE flow_sid = $1 AND status = 'published' ORDER BY revision DESC LIMIT 1"
            )
        } else {
            concat!(
                "SELECT ",
                revision_columns!(),
                " FROM flow_revisions WHERE flow_sid = $1 ORDER BY revision DESC LIMIT 1"
            )
        };
        let row = sqlx::query(stmt)
            .bind(flow_sid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| revision_from(&r)).transpose()
    }

    /// Revisions of a flow, newest first.
    pub async fn revisions(
        &self,
        flow_sid: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            revision_columns!(),
            " FROM flow_revisions WHERE flow_sid = $1 ORDER BY revision DESC LIMIT $2 OFFSET $3"
        ))
        .bind(flow_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revision_from).collect()
    }

    /// A flow's test users (addresses), sorted.
    pub async fn test_users(&self, flow_sid: &str) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT address FROM test_users WHERE flow_sid = $1 ORDER BY address")
                .bind(flow_sid)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Replace a flow's test users.
    pub async fn set_test_users(&self, flow_sid: &str, users: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM test_users WHERE flow_sid = $1")
            .bind(flow_sid)
            .execute(&mut *tx)
            .await?;
        let mut seen = std::collections::HashSet::new();
        for u in users.iter().filter(|u| seen.insert(u.as_str())) {
            sqlx::query("INSERT INTO test_users (flow_sid, address) VALUES ($1, $2)")
                .bind(flow_sid)
                .bind(u)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `address` is one of the flow's test users.
    pub async fn is_test_user(&self, flow_sid: &str, address: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM test_users WHERE flow_sid = $1 AND address = $2")
                .bind(flow_sid)
                .bind(address)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Executions of a flow, newest first, filtered by creation date, at most `limit` from `offset`.
    pub async fn list_executions(
        &self,
        flow_sid: &str,
        filter: &ExecutionFilter,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        // Absent bounds are the widest text bounds, so one statement serves every filter.
        let from = filter.created_from.clone().unwrap_or_default();
        let to = filter
            .created_to
            .clone()
            .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_string());
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE flow_sid = $1 AND date_created >= $2 AND date_created <= $3 ORDER BY date_created DESC, sid LIMIT $4 OFFSET $5"
        ))
        .bind(flow_sid)
        .bind(from)
        .bind(to)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(execution_from).collect()
    }

    /// End an active execution from outside: status ended, session key and wait cleared.
    /// Returns whether an active execution was ended.
    pub async fn end_execution(
        &self,
        sid: &str,
        state: &Value,
        now: &str,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE executions SET status = 'ended', active_key = NULL, wait_until = NULL, state = $1, date_updated = $2 WHERE sid = $3 AND status = 'active'")
            .bind(state.to_string())
            .bind(now)
            .bind(sid)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Delete an execution and its steps. Returns whether it existed.
    pub async fn delete_execution(&self, sid: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM steps WHERE execution_sid = $1")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM executions WHERE sid = $1")
            .bind(sid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Steps of an execution in the order they were taken, at most `limit` from `offset`.
    pub async fn steps_page(
        &self,
        execution_sid: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query("SELECT sid, execution_sid, name, transitioned_from, transitioned_to, event, context, error, date_created FROM steps WHERE execution_sid = $1 ORDER BY seq LIMIT $2 OFFSET $3")
            .bind(execution_sid)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(step_from).collect()
    }

    /// The step `sid`.
    pub async fn step(&self, sid: &str) -> Result<Option<StepRecord>, StoreError> {
        let row = sqlx::query("SELECT sid, execution_sid, name, transitioned_from, transitioned_to, event, context, error, date_created FROM steps WHERE sid = $1")
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| step_from(&r)).transpose()
    }
}

async fn insert_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rev: &RevisionRecord,
    n: i64,
) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO flow_revisions (",
        revision_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&rev.flow_sid)
    .bind(n)
    .bind(&rev.friendly_name)
    .bind(&rev.definition)
    .bind(&rev.status)
    .bind(rev.commit_message.clone())
    .bind(i64::from(rev.valid))
    .bind(rev.errors.to_string())
    .bind(rev.warnings.to_string())
    .bind(&rev.date_created)
    .bind(&rev.date_updated)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
