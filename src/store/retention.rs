//! Retention: executions and steps are kept for a period after they started (Studio keeps them
//! 30 days); active executions older than their limit are ended first. Portable SQL over text
//! RFC 3339 UTC timestamps (they compare as text).

use super::{ExecutionRecord, Store, StoreError};

/// What one clean-up did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Swept {
    /// Active executions that were ended (their records as they were before).
    pub ended: Vec<ExecutionRecord>,
    /// Ended executions deleted.
    pub deleted_executions: u64,
    /// Their steps deleted.
    pub deleted_steps: u64,
}

impl Store {
    /// End every active execution created before `end_before`, then delete ended executions
    /// (and their steps) created before `delete_before`. Both bounds are RFC 3339 UTC.
    pub async fn sweep(
        &self,
        end_before: &str,
        delete_before: &str,
        now: &str,
    ) -> Result<Swept, StoreError> {
        let mut out = Swept::default();
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE status = 'active' AND date_created < $1 ORDER BY date_created"
        ))
        .bind(end_before)
        .fetch_all(&self.pool)
        .await?;
        out.ended = self.end_rows(&rows, now, None).await?;
        let mut tx = self.pool.begin().await?;
        out.deleted_steps = sqlx::query(
            "DELETE FROM steps WHERE execution_sid IN (SELECT sid FROM executions WHERE status = 'ended' AND date_created < $1)",
        )
        .bind(delete_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        out.deleted_executions =
            sqlx::query("DELETE FROM executions WHERE status = 'ended' AND date_created < $1")
                .bind(delete_before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(out)
    }
}
