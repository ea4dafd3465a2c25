//! Flow engine throughput: one execution of a 10-step flow (set-variables with Liquid,
//! split-based-on with several operators) from trigger to end, no I/O.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};
use switchboard::flow::{Engine, ExecutionInit, Flow, Trigger};

fn ten_step_flow() -> String {
    let mut states = vec![
        json!({"name": "Trigger", "type": "trigger", "properties": {},
        "transitions": [{"event": "incomingMessage", "next": "set-0"}]}),
    ];
    for i in 0..4 {
        let next_split = format!("split-{i}");
        let next_set = if i < 3 {
            format!("set-{}", i + 1)
        } else {
            "done".into()
        };
        states.push(json!({"name": format!("set-{i}"), "type": "set-variables",
            "properties": {"variables": [
                {"key": format!("v{i}"), "value": "{{trigger.message.Body | upcase}}-{{flow.variables.v0 | default: 'none'}}"},
                {"key": format!("n{i}"), "value": "{{ trigger.message.Body | size | plus: 3 }}"}]},
            "transitions": [{"event": "next", "next": next_split}]}));
        states.push(json!({"name": format!("split-{i}"), "type": "split-based-on",
            "properties": {"input": "{{trigger.message.Body}}"},
            "transitions": [
                {"event": "noMatch", "next": next_set},
                {"event": "match", "next": "done", "conditions": [
                    {"friendly_name": "a", "arguments": ["{{trigger.message.Body}}"], "type": "matches_any_of", "value": "stop, quit, end"}]},
                {"event": "match", "next": "done", "conditions": [
                    {"friendly_name": "b", "arguments": ["{{trigger.message.Body}}"], "type": "regex", "value": "^[0-9]{6}$"}]}]}));
    }
    states.push(json!({"name": "done", "type": "set-variables",
        "properties": {"variables": [{"key": "result", "value": "{{flow.variables.v3}}"}]},
        "transitions": [{"event": "next"}]}));
    json!({"states": states, "initial_state": "Trigger", "flags": {"allow_concurrent_calls": true}})
        .to_string()
}

fn bench(c: &mut Criterion) {
    let flow = Flow::from_json(&ten_step_flow()).expect("bench flow is valid");
    let mut message = Map::new();
    message.insert("Body".into(), Value::String("hello there".into()));
    message.insert("From".into(), Value::String("+15550100000".into()));
    let now = chrono::Utc::now().fixed_offset();
    // Sanity: the execution really takes 10 steps (trigger + 4×(set+split) + done).
    let (_, adv) = Engine::start(
        &flow,
        init(),
        Trigger::IncomingMessage {
            message: message.clone(),
        },
        now,
    );
    assert_eq!(
        adv.steps.len(),
        10,
        "{:?}",
        adv.steps.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(10));
    g.bench_function("ten_step_execution", |b| {
        b.iter(|| {
            Engine::start(
                &flow,
                init(),
                Trigger::IncomingMessage {
                    message: message.clone(),
                },
                now,
            )
        })
    });
    g.finish();
}

fn init() -> ExecutionInit {
    ExecutionInit {
        sid: "FN00000000000000000000000000000000".into(),
        flow_sid: "FW00000000000000000000000000000000".into(),
        channel_address: "+15550199999".into(),
        contact_address: "+15550100000".into(),
        data: Value::Object(Map::new()),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
