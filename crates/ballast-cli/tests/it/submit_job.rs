//! Tests of jobs in Redis: `Store::submit_job` (submit_job.lua) makes a job and all its map
//! tasks at once; the settle hook keeps map results, counts failures against the job's
//! tolerance and makes the reduce task exactly once; `Store::cancel_job` (cancel_job.lua).

use std::time::Duration;

use ballast::store::{Cancel, ClaimedTask, Finish, Outcome};
use ballast::{JobHeader, JobState, TaskState};
use redis::AsyncCommands;
use serde_json::json;

use crate::harness::{qkey, Env};

const Q: &str = "jobs";

/// Uploads and commits a job of `n` chunks `{"n": i}`.
async fn job(env: &Env, n: usize, tolerate: i64) -> String {
    let mut h = JobHeader::new(Q, "m", "r");
    h.tolerate = tolerate;
    let mut up = env.client.start_job(h).expect("header");
    for i in 0..n {
        up.add_chunk(&json!({ "n": i })).await.expect("chunk");
    }
    up.commit().await.expect("commit")
}

async fn finish(env: &Env, w: &str, t: &ClaimedTask, outcome: Outcome) {
    let got = env.report(Q, w, t, &outcome, 0).await;
    assert!(matches!(got, Finish::Recorded(_)), "{got:?}");
}

#[tokio::test]
async fn a_job_appears_whole_with_its_map_tasks() {
    let mut env = Env::start().await;
    let jid = job(&env, 3, 0).await;
    let j = env.hash(&qkey(Q, &format!("job:{jid}"))).await;
    assert_eq!(
        (
            j["state"].as_str(),
            j["total"].as_str(),
            j["done"].as_str(),
            j["failed"].as_str()
        ),
        ("running", "3", "0", "0")
    );
    let tasks = env.list(Q, &format!("job:{jid}:tasks")).await;
    assert_eq!(
        tasks,
        (0..3).map(|i| format!("{jid}-m{i}")).collect::<Vec<_>>()
    );
    for (i, t) in tasks.iter().enumerate() {
        let h = env.task_hash(Q, t).await;
        assert_eq!(h["state"], "pending");
        assert_eq!(
            (h["job"].as_str(), h["chunk"].as_str()),
            (jid.as_str(), i.to_string().as_str())
        );
        // max_attempts, timeout (the default), kind, then the chunk's payload.
        assert_eq!(h["spec"], format!("3 300000 m\n{{\"n\":{i}}}"));
    }
    // The staged input was consumed.
    let staged: bool = env
        .raw
        .exists(qkey(Q, &format!("job:{jid}:input")))
        .await
        .expect("exists");
    assert!(!staged);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_job_whose_chunks_were_not_all_staged_is_not_created() {
    let mut env = Env::start().await;
    let h = JobHeader::new(Q, "m", "r");
    env.store
        .stage_job_input(Q, &h.id, &[(0, "1".into()), (1, "2".into())])
        .await
        .expect("stage");
    let before = env.snapshot().await;
    let e = env
        .store
        .submit_job(&h, 3)
        .await
        .expect_err("missing chunk");
    assert!(e.to_string().contains("2 of 3 chunks were staged"), "{e}");
    assert_eq!(env.snapshot().await, before);
    // An empty job and an over-limit chunk are refused before anything is sent.
    let up = env
        .client
        .start_job(JobHeader::new(Q, "m", "r"))
        .expect("header");
    assert!(up.commit().await.is_err());
    let mut bad = JobHeader::new(Q, "m", "r");
    bad.cost = 0;
    assert!(env.client.start_job(bad).is_err());
}

#[tokio::test]
async fn the_last_map_outcome_makes_the_reduce_task_once_even_after_a_rerun() {
    let mut env = Env::start().await;
    let jid = job(&env, 3, 0).await;
    env.register(Q, "a", 3, &[]).await;
    let mut claimed = env.claim(Q, "a", 3).await;
    // Chunk 0's worker dies mid-run: it is handed back and runs again elsewhere.
    let first = claimed.remove(0);
    env.register(Q, "b", 1, &[]).await;
    env.age_heartbeat(Q, "a", 60_000).await;
    env.store
        .recover_workers(Q, Duration::from_secs(5))
        .await
        .expect("recover");
    let stale = env
        .report(Q, "a", &first, &Outcome::Succeeded("{}".into()), 0)
        .await;
    assert_eq!(stale, Finish::Stale(vec![]));
    let j = env.hash(&qkey(Q, &format!("job:{jid}"))).await;
    assert_eq!(j["done"], "0");

    let rerun = env.claim(Q, "b", 1).await.remove(0);
    assert_eq!(rerun.id, format!("{jid}-m0"));
    finish(&env, "b", &rerun, Outcome::Succeeded(r#"{"c":0}"#.into())).await;
    env.register(Q, "c", 2, &[]).await;
    // Chunks 1 and 2 went to whichever of b and c had room.
    let mut rest = Vec::new();
    for w in ["b", "c"] {
        rest.extend(env.claim(Q, w, 2).await.into_iter().map(|t| (w, t)));
    }
    rest.sort_by(|x, y| x.1.id.cmp(&y.1.id));
    assert_eq!(rest.len(), 2);
    finish(
        &env,
        rest[0].0,
        &rest[0].1,
        Outcome::Succeeded(r#"{"c":1}"#.into()),
    )
    .await;
    let j = env.hash(&qkey(Q, &format!("job:{jid}"))).await;
    assert_eq!((j["state"].as_str(), j["done"].as_str()), ("running", "2"));
    assert!(!j.contains_key("reduce_task"));
    finish(
        &env,
        rest[1].0,
        &rest[1].1,
        Outcome::Succeeded(r#"{"c":2}"#.into()),
    )
    .await;

    // The last outcome made the reduce task, once.
    let j = env.hash(&qkey(Q, &format!("job:{jid}"))).await;
    let rid = format!("{jid}-reduce");
    assert_eq!(
        (
            j["state"].as_str(),
            j["done"].as_str(),
            j["reduce_task"].as_str()
        ),
        ("reducing", "3", rid.as_str())
    );
    let results: Vec<String> = redis::cmd("HMGET")
        .arg(qkey(Q, &format!("job:{jid}:results")))
        .arg(&[0, 1, 2])
        .query_async(&mut env.raw)
        .await
        .expect("results");
    assert_eq!(results, [r#"{"c":0}"#, r#"{"c":1}"#, r#"{"c":2}"#]);
    let r = env.task_hash(Q, &rid).await;
    let (head, payload) = r["spec"].split_once('\n').expect("spec");
    // The finish that made it also placed it: it waits in b's or c's inbox already.
    assert_eq!(r["state"], "assigned");
    let placed_on = r["worker"].clone();
    assert!(["b", "c"].contains(&placed_on.as_str()), "{placed_on}");
    assert_eq!(
        (head, payload),
        (
            "3 300000 r reduce",
            format!(r#"{{"chunks":3,"job":"{jid}"}}"#).as_str()
        )
    );
    let tasks = env.list(Q, &format!("job:{jid}:tasks")).await;
    assert_eq!(tasks.iter().filter(|t| t.ends_with("-reduce")).count(), 1);

    // The reduce's result is the job's.
    let mut got = Vec::new();
    for w in ["b", "c"] {
        got.extend(env.claim(Q, w, 1).await.into_iter().map(|t| (w, t)));
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let red = got.remove(0);
    assert_eq!(
        (red.0, red.1.id.as_str()),
        (placed_on.as_str(), rid.as_str())
    );
    finish(
        &env,
        red.0,
        &red.1,
        Outcome::Succeeded(r#"{"total":3}"#.into()),
    )
    .await;
    let rec = env.client.job(&jid).await.expect("job");
    assert_eq!(
        (rec.state, rec.result.clone()),
        (JobState::Succeeded, Some(json!({"total": 3})))
    );
    assert!(rec.finished_at.is_some());
    // Read by the reduce, the map results are dropped with the job's end.
    let kept: bool = env
        .raw
        .exists(qkey(Q, &format!("job:{jid}:results")))
        .await
        .expect("exists");
    assert!(!kept);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_chunk_failing_for_good_fails_the_job_and_cancels_the_rest() {
    let env = Env::start().await;
    let jid = job(&env, 4, 0).await;
    env.register(Q, "w", 2, &[]).await;
    let running = env.claim(Q, "w", 2).await;
    finish(&env, "w", &running[1], Outcome::Failed("bad input".into())).await;
    let j = env.client.job(&jid).await.expect("job");
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.error.as_deref(), Some("chunk 1 failed: bad input"));
    assert_eq!(j.first_failed_chunk, Some(1));
    // The others: not started ones cancelled, the running one asked to stop.
    let states = env.store.job_task_states(Q, &jid).await.expect("states");
    let by: Vec<TaskState> = states.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        by,
        [
            TaskState::Running,
            TaskState::Failed,
            TaskState::Cancelled,
            TaskState::Cancelled
        ]
    );
    assert_eq!(env.beat(Q, "w").await, Some(vec![running[0].id.clone()]));
    finish(&env, "w", &running[0], Outcome::Cancelled).await;
    let j = env.client.job(&jid).await.expect("job");
    assert_eq!((j.state, j.reduce_task), (JobState::Failed, None));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_job_ended_by_one_report_of_a_batch_settles_the_others_of_that_batch() {
    let env = Env::start().await;
    let jid = job(&env, 4, 0).await;
    env.register(Q, "w", 3, &[]).await;
    let r = env.claim(Q, "w", 3).await;
    // Chunk 0 fails for good: the job ends and asks its running chunks to stop, two of
    // which are reported in the same call, after it (a retry and a success).
    let fail = Outcome::Failed("bad".into());
    let retry = Outcome::Retry {
        error: "stopped".into(),
        delay: Duration::ZERO,
    };
    let ok = Outcome::Succeeded("1".into());
    let (recorded, next) = env
        .report_many(Q, "w", &[(&r[0], &fail), (&r[1], &retry), (&r[2], &ok)], 3)
        .await;
    assert_eq!((recorded, next), (vec![true; 3], vec![]));
    let states = env.store.job_task_states(Q, &jid).await.expect("states");
    let by: Vec<TaskState> = states.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        by,
        [
            TaskState::Failed,
            TaskState::Cancelled,
            TaskState::Succeeded,
            TaskState::Cancelled
        ]
    );
    assert_eq!(
        env.client.job(&jid).await.expect("job").state,
        JobState::Failed
    );
    // Every request the job's end made is void: its tasks left running in that call.
    assert_eq!(env.beat(Q, "w").await, Some(vec![]));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_tolerated_failure_still_reduces_and_a_job_can_be_cancelled() {
    let mut env = Env::start().await;
    let jid = job(&env, 2, 1).await;
    env.register(Q, "w", 2, &[]).await;
    let t = env.claim(Q, "w", 2).await;
    finish(&env, "w", &t[0], Outcome::Failed("skip me".into())).await;
    finish(&env, "w", &t[1], Outcome::Succeeded("5".into())).await;
    let j = env.client.job(&jid).await.expect("job");
    assert_eq!((j.state, j.done, j.failed), (JobState::Reducing, 1, 1));

    let other = job(&env, 3, 0).await;
    // w's second unit starts one chunk of it, so the cancel meets a running task too.
    let started: Vec<String> = env
        .claim(Q, "w", 2)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    let running = format!("{other}-m0");
    assert_eq!(started, [format!("{jid}-reduce"), running.clone()]);
    assert_eq!(
        env.store.cancel_job(Q, &other).await.expect("cancel"),
        Cancel::Cancelled
    );
    let o = env.client.job(&other).await.expect("job");
    assert_eq!(o.state, JobState::Cancelled);
    // Chunks not started are cancelled; the running one is asked to stop, and only it.
    let states = env.store.job_task_states(Q, &other).await.expect("states");
    assert_eq!(
        states.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [
            TaskState::Running,
            TaskState::Cancelled,
            TaskState::Cancelled
        ]
    );
    assert_eq!(
        env.task_hash(Q, &running)
            .await
            .get("cancel_requested")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(env.beat(Q, "w").await, Some(vec![running]));
    assert_eq!(
        env.store.cancel_job(Q, &other).await.expect("again"),
        Cancel::JobEnded("cancelled".into())
    );
    env.assert_sound(Q).await;
}
