//! The store's scenarios, written once and run against every database the store supports:
//! `tests/store.rs` runs them on SQLite (always), `tests/postgres.rs` on a throwaway PostgreSQL
//! cluster. Each scenario is an async function taking the URL of a new, empty database;
//! [`store_scenarios!`] turns the whole list into `#[tokio::test]`s for one database, so a
//! scenario added here runs on both.

use serde_json::json;
use switchboard::store::{
    new_sid, now_rfc3339, ExecutionFilter, ExecutionRecord, RevisionRecord, StepRecord, Store,
    StoreError,
};

/// One `#[tokio::test]` per scenario. `$database` is an expression that gives
/// `Option<D>` with `D: AsRef<str>` (the URL, and whatever must live as long as the database);
/// None skips the test (the database is not available here).
macro_rules! store_scenarios {
    ($database:expr) => {
        store_scenarios!(@tests $database;
            executions_steps_and_the_active_key,
            reply_waits,
            retention_ends_then_deletes,
            flows_revisions_test_users_and_listings,
        );
    };
    (@tests $database:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let Some(database) = $database else { return };
                $crate::store_scenarios::$scenario(::std::convert::AsRef::<str>::as_ref(&database))
                    .await;
            }
        )*
    };
}

pub fn exec(sid: &str, status: &str, created: &str, key: Option<&str>) -> ExecutionRecord {
    ExecutionRecord {
        sid: sid.into(),
        flow_sid: "FW1".into(),
        contact: "+1555".into(),
        status: status.into(),
        context: json!({"flow": {"variables": {}}}),
        state: json!({"status": status, "current": "wait"}),
        active_key: key.map(str::to_string),
        wait_until: None,
        date_created: created.into(),
        date_updated: created.into(),
    }
}

pub fn step(execution: &str, name: &str) -> StepRecord {
    StepRecord {
        sid: new_sid("FT"),
        execution_sid: execution.into(),
        name: name.into(),
        transitioned_from: "Trigger".into(),
        transitioned_to: name.into(),
        event: "incomingMessage".into(),
        context: json!({"n": name}),
        error: None,
        date_created: now_rfc3339(),
    }
}

fn rev(sid: &str, status: &str) -> RevisionRecord {
    RevisionRecord {
        flow_sid: sid.into(),
        revision: 0,
        friendly_name: "f".into(),
        definition: "{}".into(),
        status: status.into(),
        commit_message: Some("first".into()),
        valid: true,
        errors: json!([]),
        warnings: json!([{"message": "w"}]),
        date_created: now_rfc3339(),
        date_updated: now_rfc3339(),
    }
}

/// Executions, their steps in order, and the unique session key: one active execution per
/// key, freed when it ends; what was stored is there after the store is opened again.
pub async fn executions_steps_and_the_active_key(url: &str) {
    let store = Store::open(url).await.unwrap();
    let now = now_rfc3339();
    store
        .create_execution(&exec("FN1", "active", &now, Some("FW1|+1555")))
        .await
        .unwrap();
    let dup = store
        .create_execution(&exec("FN2", "active", &now, Some("FW1|+1555")))
        .await;
    assert!(matches!(dup, Err(StoreError::ActiveExists(_))), "{dup:?}");
    // Executions without a key (children, ended ones) do not collide on NULL.
    store
        .create_execution(&exec("FNc1", "active", &now, None))
        .await
        .unwrap();
    store
        .create_execution(&exec("FNc2", "active", &now, None))
        .await
        .unwrap();

    let got = store.active_for_key("FW1|+1555").await.unwrap().unwrap();
    assert_eq!(got.sid, "FN1");
    assert_eq!(got.context["flow"]["variables"], json!({}));

    // Steps keep their order across several progress records.
    let mut e = exec("FN1", "active", &now, Some("FW1|+1555"));
    store
        .record_progress(&e, &[step("FN1", "a"), step("FN1", "b")])
        .await
        .unwrap();
    assert_eq!(store.steps("FN1").await.unwrap().len(), 2);
    store
        .record_progress(&e, &[step("FN1", "c")])
        .await
        .unwrap();
    e.status = "ended".into();
    store
        .record_progress(&e, &[step("FN1", "d")])
        .await
        .unwrap();
    let names: Vec<String> = store
        .steps("FN1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    let got = store.execution("FN1").await.unwrap().unwrap();
    assert_eq!(got.status, "ended");
    assert_eq!(got.active_key, None, "ending frees the session key");
    assert!(store.active_for_key("FW1|+1555").await.unwrap().is_none());
    // The key is free again once the first execution ended.
    store
        .create_execution(&exec("FN3", "active", &now, Some("FW1|+1555")))
        .await
        .unwrap();
    drop(store);
    let reopened = Store::open(url).await.unwrap();
    assert_eq!(reopened.executions_for_flow("FW1").await.unwrap().len(), 4);
}

/// Executions waiting for a reply: the next deadline, which are due, and a wait claimed once.
pub async fn reply_waits(url: &str) {
    let store = Store::open(url).await.unwrap();
    assert_eq!(store.next_wait().await.unwrap(), None);
    let now = now_rfc3339();
    let mut soon = exec("FNsoon", "active", &now, Some("k-soon"));
    soon.wait_until = Some("2026-01-01T00:00:05.000Z".into());
    let mut later = exec("FNlater", "active", &now, Some("k-later"));
    later.wait_until = Some("2026-01-01T00:10:00.000Z".into());
    let mut ended = exec("FNended", "ended", &now, None);
    ended.wait_until = Some("2026-01-01T00:00:01.000Z".into());
    for e in [&later, &soon, &ended] {
        store.create_execution(e).await.unwrap();
    }
    assert_eq!(
        store.next_wait().await.unwrap().as_deref(),
        Some("2026-01-01T00:00:05.000Z")
    );
    let due = store.due_waits("2026-01-01T00:00:05.000Z").await.unwrap();
    assert_eq!(
        due.iter().map(|e| e.sid.as_str()).collect::<Vec<_>>(),
        ["FNsoon"],
        "due at its deadline, ended ones never"
    );
    let due = store.due_waits("2026-01-01T01:00:00.000Z").await.unwrap();
    assert_eq!(
        due.iter().map(|e| e.sid.as_str()).collect::<Vec<_>>(),
        ["FNsoon", "FNlater"]
    );

    // A wait is claimed once: the second claimant (a racing reply or timeout) loses.
    let mut w = exec("FN9", "active", &now, Some("FW1|+1999"));
    w.wait_until = Some("2026-01-01T00:00:00.000Z".into());
    w.flow_sid = "FW9".into();
    store.create_execution(&w).await.unwrap();
    assert!(store
        .claim_wait("FN9", "2026-01-01T00:00:00.000Z")
        .await
        .unwrap());
    assert!(!store
        .claim_wait("FN9", "2026-01-01T00:00:00.000Z")
        .await
        .unwrap());
}

/// Retention: old active executions are ended first, old ended ones (and their steps) deleted.
pub async fn retention_ends_then_deletes(url: &str) {
    let store = Store::open(url).await.unwrap();
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
            .record_progress(&e, &[step(sid, "a"), step(sid, "b")])
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

    // Every node sweeps: a second sweep at once finds nothing left to end.
    let s = store
        .sweep("2021-01-01T00:00:00.000Z", "2021-01-01T00:00:00.000Z", &new)
        .await
        .unwrap();
    assert!(s.ended.is_empty());
    assert_eq!((s.deleted_executions, s.deleted_steps), (2, 4));
    assert!(store.execution("FNold-ended").await.unwrap().is_none());
    assert!(store.steps("FNold-active").await.unwrap().is_empty());
    assert_eq!(store.steps("FNnew").await.unwrap().len(), 2);
    assert_eq!(
        store.execution("FNnew").await.unwrap().unwrap().status,
        "active"
    );
}

/// What the REST API keeps: flows and their revisions, test users, paged listings of
/// executions and steps, ending and deleting.
pub async fn flows_revisions_test_users_and_listings(url: &str) {
    let store = Store::open(url).await.unwrap();
    let sid = new_sid("FW");
    store.create_flow(&rev(&sid, "draft")).await.unwrap();
    assert_eq!(
        store.add_revision(&rev(&sid, "published")).await.unwrap(),
        Some(2)
    );
    let mut invalid = rev(&sid, "draft");
    invalid.valid = false;
    invalid.commit_message = None;
    assert_eq!(store.add_revision(&invalid).await.unwrap(), Some(3));
    assert_eq!(
        store.add_revision(&rev("FWnope", "draft")).await.unwrap(),
        None
    );
    let f = store.flow(&sid).await.unwrap().unwrap();
    assert_eq!((f.revision, f.status.as_str()), (3, "draft"));
    let p = store.latest_revision(&sid, true).await.unwrap().unwrap();
    assert_eq!((p.revision, p.valid), (2, true));
    assert_eq!(p.warnings, json!([{"message": "w"}]));
    let r3 = store.revision(&sid, 3).await.unwrap().unwrap();
    assert_eq!((r3.valid, r3.commit_message), (false, None));
    let revs = store.revisions(&sid, 0, 2).await.unwrap();
    assert_eq!(revs.iter().map(|r| r.revision).collect::<Vec<_>>(), [3, 2]);
    let revs = store.revisions(&sid, 2, 2).await.unwrap();
    assert_eq!(revs.iter().map(|r| r.revision).collect::<Vec<_>>(), [1]);
    let other = new_sid("FW");
    store.create_flow(&rev(&other, "published")).await.unwrap();
    assert_eq!(store.flows(0, 10).await.unwrap().len(), 2);
    assert_eq!(store.flows(1, 10).await.unwrap().len(), 1);
    assert_eq!(store.flow_sids().await.unwrap().len(), 2);

    store
        .set_test_users(&sid, &["+1".into(), "+2".into(), "+1".into()])
        .await
        .unwrap();
    assert_eq!(store.test_users(&sid).await.unwrap(), ["+1", "+2"]);
    assert!(store.is_test_user(&sid, "+2").await.unwrap());
    assert!(!store.is_test_user(&sid, "+3").await.unwrap());

    for (i, day) in ["2026-01-01", "2026-01-02", "2026-01-03"]
        .iter()
        .enumerate()
    {
        let mut e = exec(
            &format!("FN{i}"),
            "active",
            &format!("{day}T00:00:00.000Z"),
            Some(&format!("k{i}")),
        );
        e.flow_sid = sid.clone();
        store.create_execution(&e).await.unwrap();
    }
    let all = store
        .list_executions(&sid, &ExecutionFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.sid.as_str()).collect::<Vec<_>>(),
        ["FN2", "FN1", "FN0"]
    );
    let page = store
        .list_executions(&sid, &ExecutionFilter::default(), 1, 1)
        .await
        .unwrap();
    assert_eq!(page[0].sid, "FN1");
    let f = ExecutionFilter {
        created_from: Some("2026-01-02T00:00:00.000Z".into()),
        created_to: Some("2026-01-02T23:59:59.999Z".into()),
    };
    let mid = store.list_executions(&sid, &f, 0, 10).await.unwrap();
    assert_eq!(mid.len(), 1);
    assert_eq!(
        mid.iter().map(|e| e.sid.as_str()).collect::<Vec<_>>(),
        ["FN1"]
    );

    let e = store.execution("FN1").await.unwrap().unwrap();
    store
        .record_progress(&e, &[step("FN1", "a"), step("FN1", "b"), step("FN1", "c")])
        .await
        .unwrap();
    let page = store.steps_page("FN1", 1, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["b", "c"]
    );
    let one = store.step(&page[0].sid).await.unwrap().unwrap();
    assert_eq!(one.context, json!({"n": "b"}));

    assert!(store
        .end_execution("FN1", &json!({}), &now_rfc3339())
        .await
        .unwrap());
    assert!(!store
        .end_execution("FN1", &json!({}), &now_rfc3339())
        .await
        .unwrap());
    let e = store.execution("FN1").await.unwrap().unwrap();
    assert_eq!((e.status.as_str(), e.active_key.clone()), ("ended", None));
    // A runner still driving it cannot make it active again.
    let mut back = e.clone();
    back.status = "active".into();
    back.active_key = Some("k1".into());
    store.record_progress(&back, &[]).await.unwrap();
    assert_eq!(
        store.execution("FN1").await.unwrap().unwrap().status,
        "ended"
    );

    assert!(store.delete_execution("FN1").await.unwrap());
    assert!(store.execution("FN1").await.unwrap().is_none());
    assert!(store.steps("FN1").await.unwrap().is_empty());
    assert!(!store.delete_execution("FN1").await.unwrap());
    assert!(store.delete_execution("FN0").await.unwrap());
    assert!(store.execution("FN0").await.unwrap().is_none());
    assert!(store.delete_flow(&sid).await.unwrap());
    assert!(!store.delete_flow(&sid).await.unwrap());
    assert!(store.flow(&sid).await.unwrap().is_none());
    assert!(store.revision(&sid, 1).await.unwrap().is_none());
    assert!(store.test_users(&sid).await.unwrap().is_empty());
}
