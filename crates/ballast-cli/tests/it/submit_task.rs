//! Tests of `Store::submit_task` (submit_task.lua): the stored record, where the task goes
//! (assigned, pending or parked), and that a duplicate id changes nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use ballast::store::{Finish, Outcome};
use ballast::{Placement, QueueCounts, TaskSpec, TaskState};
use serde_json::json;

use crate::harness::{
    expect_keys, free_score, function_libraries, on, order_score, put, qkey, strmap, take_time,
    task, Env, ORDER_SHIFT,
};

const Q: &str = "jobs";

#[tokio::test]
async fn stores_the_record_with_every_field() {
    let mut env = Env::start().await;
    let spec = TaskSpec::new(Q, "resize")
        .payload(json!({"size": [640, 480]}))
        .priority(5)
        .cost(3)
        .tag("ssd")
        .tag("gpu")
        .tag("ssd")
        .max_attempts(4)
        .timeout(Duration::from_millis(1500));
    let lo = env.now_ms().await;
    let placed = env.client.submit(&spec).await.expect("submit");
    let hi = env.now_ms().await;
    assert_eq!(placed, Placement::Pending);

    let mut h = env.task_hash(Q, &spec.id).await;
    take_time(&mut h, "submitted_at", lo, hi);
    let order = order_score(5, 1).to_string();
    assert_eq!(
        h,
        strmap(&[
            // max_attempts, timeout and kind, then the payload: one field the worker reads.
            ("spec", "4 1500 resize\n{\"size\":[640,480]}"),
            ("priority", "5"),
            ("cost", "3"),
            ("tags", "gpu,ssd"),
            ("state", "pending"),
            ("order", &order),
        ])
    );
    assert_eq!(
        env.zscores(Q, "pending").await,
        vec![(spec.id.clone(), order_score(5, 1) as f64)]
    );
    let seq: i64 = redis::AsyncCommands::get(&mut env.raw, qkey(Q, "seq"))
        .await
        .expect("seq");
    assert_eq!(seq, 1);
    let queues: Vec<String> = redis::AsyncCommands::smembers(&mut env.raw, "ballast:queues")
        .await
        .expect("queues");
    assert_eq!(queues, vec![Q.to_string()]);
    assert_eq!(
        env.keys().await,
        expect_keys(Q, &["pending", "seq", &format!("task:{}", spec.id)])
    );

    // The typed read gives the same record back.
    let rec = env.task_record(Q, &spec.id).await;
    assert_eq!(rec.state, TaskState::Pending);
    assert_eq!(rec.payload, json!({"size": [640, 480]}));
    assert_eq!(rec.tags, vec!["gpu", "ssd"]);
    assert_eq!((rec.priority, rec.cost, rec.max_attempts), (5, 3, 4));
    assert_eq!((rec.timeout_ms, rec.attempts, rec.lease), (1500, 0, 0));
    assert_eq!(rec.worker, None);
    assert_eq!(
        (rec.assigned_at, rec.started_at, rec.finished_at),
        (None, None, None)
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_default_record_leaves_out_what_its_key_and_defaults_tell() {
    let mut env = Env::start().await;
    let spec = TaskSpec::new(Q, "noop");
    env.client.submit(&spec).await.expect("submit");
    let h = env.task_hash(Q, &spec.id).await;
    let fields: BTreeSet<&str> = h.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["spec", "cost", "state", "order", "submitted_at"])
    );
    // The typed read fills in the rest.
    let rec = env.task_record(Q, &spec.id).await;
    assert_eq!((rec.id.as_str(), rec.queue.as_str()), (spec.id.as_str(), Q));
    assert_eq!((rec.priority, rec.attempts, rec.lease), (0, 0, 0));
    assert!(rec.tags.is_empty());
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn order_puts_higher_priority_first_and_keeps_submission_order() {
    let mut env = Env::start().await;
    let a = env.submit(task(Q, 1)).await;
    let b = env.submit(task(Q, 1).priority(1000)).await;
    let c = env.submit(task(Q, 1).priority(-1000)).await;
    let d = env.submit(task(Q, 1)).await;
    assert_eq!(
        env.zscores(Q, "pending").await,
        vec![
            (b.clone(), order_score(1000, 2) as f64),
            (a.clone(), order_score(0, 1) as f64),
            (d.clone(), order_score(0, 4) as f64),
            (c.clone(), (2000 * ORDER_SHIFT + 3) as f64),
        ]
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn assigned_when_a_worker_has_room() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 4, &[]).await;
    let lo = env.now_ms().await;
    let (id, placed) = put(&env, task(Q, 3)).await;
    let hi = env.now_ms().await;
    assert_eq!(placed, on("w1"));

    let mut h = env.task_hash(Q, &id).await;
    let submitted = take_time(&mut h, "submitted_at", lo, hi);
    let assigned = take_time(&mut h, "assigned_at", submitted, hi);
    assert_eq!(h["state"], "assigned");
    assert_eq!(h["worker"], "w1");
    assert_eq!(h["lease"], "1");
    assert_eq!((h["attempts"].as_str(), h["runs"].as_str()), ("0", "0"));

    let w = env.worker_hash(Q, "w1").await;
    assert_eq!((w["assigned"].as_str(), w["capacity"].as_str()), ("3", "4"));
    assert_eq!(w["tick"], "1");
    assert_eq!(env.inbox(Q, "w1").await, vec![id.clone()]);
    assert_eq!(env.held(Q, "w1").await, vec![id.clone()]);
    assert_eq!(
        env.zscores(Q, "assigned").await,
        vec![(id.clone(), assigned as f64)]
    );
    assert_eq!(
        env.zscores(Q, "free").await,
        vec![("w1".to_string(), free_score(1, 1))]
    );
    assert_eq!(
        env.keys().await,
        expect_keys(
            Q,
            &[
                "assigned",
                "cap",
                "epoch",
                "free",
                "heartbeats",
                "seq",
                "tick",
                &format!("task:{id}"),
                "worker:w1",
                "worker:w1:inbox",
                "worker:w1:tasks",
                "workers",
            ]
        )
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn pending_when_no_worker_has_room() {
    let mut env = Env::start().await;
    // No worker at all: pending, not parked (nothing is known about supply).
    let lonely = env.submit(task(Q, 1000)).await;
    assert_eq!(env.zrange(Q, "pending").await, vec![lonely.clone()]);

    env.register(Q, "w1", 2, &[]).await;
    // Registration parks what no worker could ever run.
    assert_eq!(env.zrange(Q, "parked").await, vec![lonely.clone()]);

    let (first, p) = put(&env, task(Q, 2)).await;
    assert_eq!(p, on("w1"));
    // The worker is full: a task that fits it once it frees up waits in pending.
    let (second, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    assert_eq!(env.zrange(Q, "pending").await, vec![second.clone()]);
    assert_eq!(env.zrange(Q, "parked").await, vec![lonely.clone()]);
    assert_eq!(env.task_hash(Q, &second).await["state"], "pending");
    assert!(!env.task_hash(Q, &second).await.contains_key("worker"));
    assert_eq!(env.worker_int(Q, "w1", "assigned").await, 2);
    assert_eq!(env.inbox(Q, "w1").await, vec![first]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn pending_when_room_is_only_partly_free() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 4, &[]).await;
    let a = env.submit(task(Q, 3)).await;
    let (b, p) = put(&env, task(Q, 2)).await;
    assert_eq!(p, Placement::Pending);
    assert_eq!(env.zrange(Q, "pending").await, vec![b]);
    assert!(env.zrange(Q, "parked").await.is_empty());
    assert_eq!(env.inbox(Q, "w1").await, vec![a]);
    assert_eq!(env.worker_int(Q, "w1", "assigned").await, 3);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn parked_when_no_worker_could_ever_run_it() {
    let mut env = Env::start().await;
    env.register(Q, "small", 2, &[]).await;
    env.register(Q, "ssd", 3, &["ssd"]).await;
    let before = env.keys().await;

    let too_big = task(Q, 4);
    let no_tag = task(Q, 1).tag("gpu");
    let needs_two_tags = task(Q, 3).tag("zone9").tag("ssd");
    let tag_too_small = task(Q, 4).tag("ssd");
    for spec in [&too_big, &no_tag, &needs_two_tags, &tag_too_small] {
        assert_eq!(
            env.client.submit(spec).await.expect("submit"),
            Placement::Parked,
            "{spec:?}"
        );
        let h = env.task_hash(Q, &spec.id).await;
        assert_eq!(h["state"], "pending");
        assert!(
            !h.contains_key("worker") && !h.contains_key("lease"),
            "{h:?}"
        );
    }
    assert_eq!(
        env.zrange(Q, "parked").await,
        vec![
            too_big.id.clone(),
            no_tag.id.clone(),
            needs_two_tags.id.clone(),
            tag_too_small.id.clone()
        ]
    );
    // Parked tasks keep their order score.
    let scores: Vec<f64> = env
        .zscores(Q, "parked")
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        scores,
        (1..=4)
            .map(|seq| order_score(0, seq) as f64)
            .collect::<Vec<_>>()
    );
    // Workers untouched; nothing pending, assigned or in an inbox.
    for w in ["small", "ssd"] {
        assert_eq!(env.worker_int(Q, w, "assigned").await, 0);
    }
    let mut want = before;
    want.extend(
        ["parked".to_string(), "seq".to_string()]
            .into_iter()
            .chain(
                [&too_big, &no_tag, &needs_two_tags, &tag_too_small]
                    .map(|s| format!("task:{}", s.id)),
            )
            .map(|n| qkey(Q, &n)),
    );
    want.sort();
    assert_eq!(env.keys().await, want);
    assert_eq!(
        env.store.counts(Q).await.expect("counts"),
        QueueCounts {
            pending: 4,
            parked: 4,
            ..QueueCounts::default()
        }
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_duplicate_id_changes_nothing_and_is_told_where_the_task_went() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 2, &[]).await;
    let spec = task(Q, 1);
    assert_eq!(put(&env, spec.clone()).await.1, on("w1"));
    let before = env.snapshot().await;

    // Same id, different everything else: nothing written, and the reply tells where the
    // stored task went (a batch sent again after a lost reply learns what the first did).
    let mut again = TaskSpec::new(Q, "other").cost(2).priority(9);
    again.id = spec.id.clone();
    assert_eq!(put(&env, again.clone()).await.1, on("w1"));
    assert_eq!(
        env.client
            .submit_many(&[again, spec])
            .await
            .expect("submit"),
        vec![on("w1"); 2]
    );
    assert_eq!(env.snapshot().await, before);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_batch_is_placed_task_by_task() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 4, &[]).await;
    // 2 and 1 fit; 2 waits for the last free unit to grow; 9 fits no worker ever.
    let specs = vec![task(Q, 2), task(Q, 1), task(Q, 2), task(Q, 9)];
    let placed = env.client.submit_many(&specs).await.expect("submit");
    assert_eq!(
        placed,
        vec![on("w1"), on("w1"), Placement::Pending, Placement::Parked]
    );
    assert_eq!(
        env.inbox(Q, "w1").await,
        vec![specs[0].id.clone(), specs[1].id.clone()]
    );
    assert_eq!(env.zrange(Q, "pending").await, vec![specs[2].id.clone()]);
    assert_eq!(env.zrange(Q, "parked").await, vec![specs[3].id.clone()]);
    assert_eq!(env.worker_int(Q, "w1", "assigned").await, 3);
    env.assert_sound(Q).await;
}

/// Asserts Redis holds one library, ballast's, with its 15 functions, each named
/// `<library>_<function>`.
async fn assert_one_ballast_library(env: &mut Env) {
    let libraries = function_libraries(env).await;
    assert_eq!(libraries.len(), 1, "one ballast library: {libraries:?}");
    let (name, functions) = &libraries[0];
    assert!(name.starts_with("ballast_"), "library {name}");
    assert_eq!(functions.len(), 15, "{name}: {functions:?}");
    let distinct: BTreeSet<&String> = functions.iter().collect();
    assert_eq!(distinct.len(), 15, "{name}: {functions:?}");
    let prefix = format!("{name}_");
    for f in functions {
        assert!(
            f.len() > prefix.len() && f.starts_with(&prefix),
            "function {f} is not named {prefix}<function>"
        );
    }
}

#[tokio::test]
async fn the_function_library_is_loaded_again_when_redis_lost_it() {
    let mut env = Env::start().await;
    env.submit(task(Q, 1)).await;
    assert_one_ballast_library(&mut env).await;
    // A restart without persistence or a failover to a replica that never had it.
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut env.raw)
        .await
        .expect("flush");
    let id = env.submit(task(Q, 1)).await;
    assert_eq!(
        env.task_hash(Q, &id).await["state"],
        "pending",
        "the submit after the flush went through"
    );
    assert_one_ballast_library(&mut env).await;
    env.assert_sound(Q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_learns_its_queues_again() {
    let mut env = Env::start().await;
    env.client
        .submit(&TaskSpec::new("q", "add"))
        .await
        .expect("submit");
    assert_eq!(env.store.queues().await.expect("queues"), vec!["q"]);
    // No persistence: the restarted Redis is empty, and the same handle submits again.
    env.restart_redis();
    assert!(env.store.queues().await.expect("queues").is_empty());
    env.client
        .submit(&TaskSpec::new("q", "add"))
        .await
        .expect("submit");
    assert_eq!(env.store.queues().await.expect("queues"), vec!["q"]);
}

#[tokio::test]
async fn a_user_who_may_not_write_the_queue_directory_still_submits() {
    let mut env = Env::start().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "producer", "on", ">pw", "~*", "&*", "+@all", "-sadd",
        ])
        .query_async(&mut env.raw)
        .await
        .expect("acl setuser");
    let producer = ballast::Client::new(
        ballast::store::Store::connect(&format!("{}?user=producer&pass=pw", env.url))
            .await
            .expect("connect as producer"),
    );
    // The directory's SADD is refused; the submit is stored and placed all the same (the
    // refusal is logged once), and the queue is simply not listed.
    let spec = TaskSpec::new(Q, "add");
    let placed = producer.submit(&spec).await.expect("submit without SADD");
    assert_eq!(placed, Placement::Pending);
    assert_eq!(env.task_hash(Q, &spec.id).await["state"], "pending");
    assert!(env.store.queues().await.expect("queues").is_empty());
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_redis_without_functions_is_named_as_too_old() {
    // FCALL renamed away: what a Redis older than 7.0 answers.
    let env = Env::start_with(&["--rename-command", "FCALL", ""]).await;
    let e = env
        .client
        .submit(&task(Q, 1))
        .await
        .expect_err("no functions");
    assert!(
        e.to_string().contains("ballast needs Redis 7.0 or later"),
        "{e}"
    );
}

#[tokio::test]
async fn a_repeated_id_is_told_where_its_task_stands_now() {
    let env = Env::start().await;
    env.register(Q, "w", 1, &[]).await;
    // Ran and succeeded.
    let done = task(Q, 1);
    put(&env, done.clone()).await;
    let t = env.claim(Q, "w", 1).await.remove(0);
    env.finish(Q, "w", &t, 0).await;
    assert_eq!(put(&env, done).await.1, Placement::Finished);
    // Ran once, and waits for its retry.
    let retried = task(Q, 1).max_attempts(5);
    put(&env, retried.clone()).await;
    let t = env.claim(Q, "w", 1).await.remove(0);
    let retry = Outcome::Retry {
        error: "later".into(),
        delay: Duration::from_secs(60),
    };
    assert_eq!(
        env.report(Q, "w", &t, &retry, 0).await,
        Finish::Recorded(vec![])
    );
    assert_eq!(put(&env, retried).await.1, Placement::Scheduled);
    // Cancelled before it started.
    let busy = task(Q, 1);
    assert_eq!(put(&env, busy.clone()).await.1, on("w"));
    let cancelled = task(Q, 1);
    assert_eq!(put(&env, cancelled.clone()).await.1, Placement::Pending);
    env.store
        .cancel_task(Q, &cancelled.id)
        .await
        .expect("cancel");
    assert_eq!(put(&env, cancelled).await.1, Placement::Finished);
    assert_eq!(put(&env, busy).await.1, on("w"));
    env.assert_sound(Q).await;
}
