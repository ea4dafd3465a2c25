//! The retention task: runs the store's clean-up once at start and then every
//! `[retention] interval_secs`, and reports executions it ended as `execution.ended` events.
//! It sits above both the store and the event streams, so neither needs the other.

/// Background task: sweep once at start, then every `interval_secs`. Ended executions are
/// reported as `execution.ended` events (reason `ENDED_BY_RETENTION`).
pub async fn run(
    store: crate::store::Store,
    cfg: crate::config::RetentionConfig,
    events: Option<crate::events::Events>,
) {
    let interval = std::time::Duration::from_secs(cfg.interval_secs.max(1));
    loop {
        let now = chrono::Utc::now();
        let before = |secs: u64| {
            let age = chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000));
            now.checked_sub_signed(age)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match store
            .sweep(
                &before(cfg.max_active_secs),
                &before(cfg.max_age_secs),
                &stamp,
            )
            .await
        {
            Ok(s) => {
                for e in &s.ended {
                    tracing::info!(execution = %e.sid, flow = %e.flow_sid, "execution ended: older than the retention limit");
                    if let Some(ev) = &events {
                        let ended = crate::store::ExecutionRecord {
                            status: "ended".into(),
                            date_updated: stamp.clone(),
                            ..e.clone()
                        };
                        ev.execution_ended(&ended, "ENDED_BY_RETENTION");
                    }
                }
                if s.deleted_executions > 0 {
                    tracing::info!(
                        executions = s.deleted_executions,
                        steps = s.deleted_steps,
                        "retention: old executions deleted"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep"),
        }
        // A message SID is remembered as long as the executions it could have started.
        if let Err(e) = store
            .sweep_inbound_messages(&before(cfg.max_age_secs))
            .await
        {
            tracing::warn!(error = %e, "retention sweep of inbound message claims");
        }
        tokio::time::sleep(interval).await;
    }
}
