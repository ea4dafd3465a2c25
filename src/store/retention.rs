//! Retention: executions and steps are kept for a period after they started (Studio keeps them
//! 30 days); active executions older than their limit are ended first. Portable SQL over text
//! RFC 3339 UTC timestamps (they compare as text).

use super::{ExecutionRecord, Store, StoreError};

/// What one clean-up did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Swept {
    /// Active executions that were ended (their records as they were before).
    pub ended: Vec<ExecutionRecord>,
    pub deleted_executions: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{new_sid, now_rfc3339, StepRecord};
    use serde_json::json;

    fn exec(sid: &str, status: &str, created: &str, key: Option<&str>) -> ExecutionRecord {
        ExecutionRecord {
            sid: sid.into(),
            flow_sid: "FW1".into(),
            contact: "+1555".into(),
            status: status.into(),
            context: json!({}),
            state: json!({"status": status, "current": "wait"}),
            active_key: key.map(str::to_string),
            wait_until: None,
            date_created: created.into(),
            date_updated: created.into(),
        }
    }

    fn step(execution: &str) -> StepRecord {
        StepRecord {
            sid: new_sid("FT"),
            execution_sid: execution.into(),
            name: "a".into(),
            transitioned_from: "Trigger".into(),
            transitioned_to: "a".into(),
            event: "incomingMessage".into(),
            context: json!({}),
            error: None,
            date_created: now_rfc3339(),
        }
    }

    #[tokio::test]
    async fn old_executions_end_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let old = "2020-01-01T00:00:00.000Z";
        let new = now_rfc3339();
        store
            .create_execution(&exec("FNold-ended", "ended", old, None))
            .await
            .unwrap();
        store
            .create_execution(&exec("FNold-active", "active", old, Some("k1")))
            .await
            .unwrap();
        store
            .create_execution(&exec("FNnew", "active", &new, Some("k2")))
            .await
            .unwrap();
        for sid in ["FNold-ended", "FNold-active", "FNnew"] {
            let e = store.execution(sid).await.unwrap().unwrap();
            store
                .record_progress(&e, &[step(sid), step(sid)])
                .await
                .unwrap();
        }
        // End what is older than a day, delete only what is older than ten years: nothing goes.
        let s = store
            .sweep("2021-01-01T00:00:00.000Z", "2010-01-01T00:00:00.000Z", &new)
            .await
            .unwrap();
        assert_eq!(s.ended.len(), 1);
        assert_eq!(s.ended[0].sid, "FNold-active");
        assert_eq!(s.deleted_executions, 0);
        let ended = store.execution("FNold-active").await.unwrap().unwrap();
        assert_eq!(ended.status, "ended");
        assert_eq!(ended.active_key, None, "the session is free again");
        assert_eq!(ended.state["status"], "ended");

        let s = store
            .sweep("2021-01-01T00:00:00.000Z", "2021-01-01T00:00:00.000Z", &new)
            .await
            .unwrap();
        assert!(s.ended.is_empty());
        assert_eq!(s.deleted_executions, 2);
        assert_eq!(s.deleted_steps, 4);
        assert!(store.execution("FNold-ended").await.unwrap().is_none());
        assert!(store.steps("FNold-active").await.unwrap().is_empty());
        assert_eq!(store.steps("FNnew").await.unwrap().len(), 2);
        assert_eq!(
            store.execution("FNnew").await.unwrap().unwrap().status,
            "active"
        );
    }
}
