//! Tests of input validation through `Client::submit` and `Client::submit_many`: every bad
//! field is refused with its name and a one-line reason naming the limit, and nothing is
//! written to Redis.

use ballast::{Client, Error, Limits, TaskSpec};
use serde_json::json;

use crate::harness::{task, Env};

const Q: &str = "jobs";
const NAME_RULE: &str = "names match [A-Za-z0-9_.-]{1,64}";

/// Every bad spec with the field and the full message it must be refused with.
fn bad_specs() -> Vec<(TaskSpec, &'static str, String)> {
    let with_id = |id: &str| {
        let mut s = task(Q, 1);
        s.id = id.to_string();
        s
    };
    let mut zero_timeout = task(Q, 1);
    zero_timeout.timeout_ms = 0;
    let mut long_timeout = task(Q, 1);
    long_timeout.timeout_ms = 7 * 24 * 3600 * 1000 + 1;
    let many_tags = (0..17).fold(task(Q, 1), |s, i| s.tag(format!("t{i}")));
    vec![
        (
            task("a}b", 1),
            "queue",
            format!("invalid queue: '}}' is not allowed; {NAME_RULE}"),
        ),
        (
            task("a{b", 1),
            "queue",
            format!("invalid queue: '{{' is not allowed; {NAME_RULE}"),
        ),
        (
            task("a b", 1),
            "queue",
            format!("invalid queue: ' ' is not allowed; {NAME_RULE}"),
        ),
        (
            task("a:b", 1),
            "queue",
            format!("invalid queue: ':' is not allowed; {NAME_RULE}"),
        ),
        (
            task(&"q".repeat(65), 1),
            "queue",
            "invalid queue: length 65 is outside 1..=64".into(),
        ),
        (
            task("", 1),
            "queue",
            "invalid queue: length 0 is outside 1..=64".into(),
        ),
        (
            TaskSpec::new(Q, "re/size"),
            "kind",
            format!("invalid kind: '/' is not allowed; {NAME_RULE}"),
        ),
        (
            TaskSpec::new(Q, "k".repeat(65)),
            "kind",
            "invalid kind: length 65 is outside 1..=64".into(),
        ),
        (
            with_id("x,y"),
            "id",
            format!("invalid id: ',' is not allowed; {NAME_RULE}"),
        ),
        (
            task(Q, 0),
            "cost",
            "invalid cost: 0 is below the minimum 1".into(),
        ),
        (
            task(Q, -1),
            "cost",
            "invalid cost: -1 is below the minimum 1".into(),
        ),
        (
            task(Q, 1_000_001),
            "cost",
            "invalid cost: 1000001 is above the maximum 1000000".into(),
        ),
        (
            task(Q, 1).priority(1001),
            "priority",
            "invalid priority: 1001 is above the maximum 1000".into(),
        ),
        (
            task(Q, 1).priority(-1001),
            "priority",
            "invalid priority: -1001 is below the minimum -1000".into(),
        ),
        (
            task(Q, 1).tag("gpu").tag("a,b"),
            "tags",
            format!("invalid tags: ',' is not allowed; {NAME_RULE}"),
        ),
        (
            task(Q, 1).tag("x{y}"),
            "tags",
            format!("invalid tags: '{{' is not allowed; {NAME_RULE}"),
        ),
        (
            many_tags,
            "tags",
            "invalid tags: 17 tags is above the maximum 16".into(),
        ),
        (
            task(Q, 1).max_attempts(0),
            "max_attempts",
            "invalid max_attempts: 0 is below the minimum 1".into(),
        ),
        (
            task(Q, 1).max_attempts(1001),
            "max_attempts",
            "invalid max_attempts: 1001 is above the maximum 1000".into(),
        ),
        (
            zero_timeout,
            "timeout_ms",
            "invalid timeout_ms: 0 is below the minimum 1".into(),
        ),
        (
            long_timeout,
            "timeout_ms",
            "invalid timeout_ms: 604800001 is above the maximum 604800000".into(),
        ),
    ]
}

#[tokio::test]
async fn every_bad_field_is_refused_and_nothing_is_written() {
    let mut env = Env::start().await;
    for (spec, field, message) in bad_specs() {
        let err = env.client.submit(&spec).await.expect_err(&message);
        match &err {
            Error::Invalid(inv) => assert_eq!(inv.field, field, "{message}"),
            other => panic!("{message}: got {other:?}"),
        }
        let text = err.to_string();
        assert_eq!(text, message);
        assert!(!text.contains('\n'), "{text}");
        assert!(
            env.keys().await.is_empty(),
            "{message}: something was written"
        );
    }
}

#[tokio::test]
async fn the_payload_limit_is_the_clients_and_inclusive() {
    let mut env = Env::start().await;
    let client = Client::new(env.store.clone()).with_limits(Limits {
        max_payload_bytes: 16,
    });
    // "xxxxxxxxxxxxxxxxxxxx" is 22 bytes of JSON text.
    let big = task(Q, 1).payload(json!("x".repeat(20)));
    let err = client.submit(&big).await.expect_err("too big");
    assert!(
        matches!(&err, Error::Invalid(inv) if inv.field == "payload"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "invalid payload: 22 bytes is above the limit of 16 bytes"
    );
    let err = client
        .submit_many(&[task(Q, 1), big.clone()])
        .await
        .expect_err("too big");
    assert_eq!(
        err.to_string(),
        "task 1 of the batch: invalid payload: 22 bytes is above the limit of 16 bytes"
    );
    assert!(env.keys().await.is_empty());

    // Exactly at the limit is accepted (14 x's and two quotes); the default client takes
    // the big one.
    let at_limit = task(Q, 1).payload(json!("x".repeat(14)));
    client.submit(&at_limit).await.expect("at the limit");
    env.client.submit(&big).await.expect("default limit");
    assert_eq!(env.zrange(Q, "pending").await, vec![at_limit.id, big.id]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn one_bad_task_in_a_batch_writes_none_of_it() {
    let mut env = Env::start().await;
    env.register(Q, "w", 4, &[]).await;
    let before = env.snapshot().await;
    for (bad, field, message) in bad_specs() {
        let batch = vec![task(Q, 1), task(Q, 2), bad, task(Q, 1)];
        let err = env.client.submit_many(&batch).await.expect_err(&message);
        match &err {
            Error::InvalidInBatch { index, source } => {
                assert_eq!(*index, 2, "{message}");
                assert_eq!(source.field, field, "{message}");
            }
            other => panic!("{message}: got {other:?}"),
        }
        assert_eq!(err.to_string(), format!("task 2 of the batch: {message}"));
        assert_eq!(
            env.snapshot().await,
            before,
            "{message}: something was written"
        );
    }
    // The first bad task is the one reported.
    let batch = vec![task(Q, 1), task(Q, 0), task(Q, 1).priority(5000)];
    match env.client.submit_many(&batch).await {
        Err(Error::InvalidInBatch { index: 1, source }) => assert_eq!(source.field, "cost"),
        other => panic!("got {other:?}"),
    }
    assert_eq!(env.snapshot().await, before);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn the_largest_valid_values_are_accepted() {
    let mut env = Env::start().await;
    let mut spec = TaskSpec::new("q".repeat(64), "k".repeat(64))
        .cost(1_000_000)
        .priority(-1000)
        .max_attempts(1000)
        .tag("a.b-c_D9");
    spec.timeout_ms = 7 * 24 * 3600 * 1000;
    let queue = spec.queue.clone();
    env.client.submit(&spec).await.expect("valid");
    let h = env.task_hash(&queue, &spec.id).await;
    assert_eq!(h["cost"], "1000000");
    assert_eq!(h["priority"], "-1000");
    assert!(h["spec"].starts_with("1000 604800000 "), "{}", h["spec"]);
    assert_eq!(h["tags"], "a.b-c_D9");
    env.assert_sound(&queue).await;
}
