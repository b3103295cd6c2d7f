//! Tests of the placement routine `place` in lib.lua, through the scripts that call it:
//! priority then FIFO order, the most-free worker that fits, even sharing, cost fit, tags,
//! and the bounded look-ahead (a blocked head task reserves its worker and is not starved;
//! a task no worker could ever run is parked and blocks nothing).

use ballast::{Placement, TaskSpec};

use crate::harness::{on, put, task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn higher_priority_first_fifo_within_a_priority() {
    let mut env = Env::start().await;
    let a = env.submit(task(Q, 1)).await;
    let b = env.submit(task(Q, 1).priority(5)).await;
    let c = env.submit(task(Q, 1)).await;
    let d = env.submit(task(Q, 1).priority(5)).await;
    let e = env.submit(task(Q, 1).priority(-3)).await;
    let f = env.submit(task(Q, 1).priority(5)).await;
    assert_eq!(
        env.zrange(Q, "pending").await,
        vec![
            b.clone(),
            d.clone(),
            f.clone(),
            a.clone(),
            c.clone(),
            e.clone()
        ]
    );
    // Room for three: the three priority-5 tasks, in submission order.
    env.register(Q, "w", 3, &[]).await;
    assert_eq!(env.inbox(Q, "w").await, vec![b, d, f]);
    assert_eq!(
        env.zrange(Q, "pending").await,
        vec![a.clone(), c.clone(), e.clone()]
    );
    env.assert_sound(Q).await;

    // As room frees up, the rest follow in order.
    let mut order = Vec::new();
    let mut running = env.claim(Q, "w", 3).await;
    while let Some(t) = running.pop() {
        for next in env.finish(Q, "w", &t, 1).await {
            order.push(next.id.clone());
            running.insert(0, next);
        }
    }
    assert_eq!(order, vec![a, c, e]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_late_high_priority_task_overtakes_waiting_ones() {
    let mut env = Env::start().await;
    env.register(Q, "w", 1, &[]).await;
    let (_, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("w"));
    let low = env.submit(task(Q, 1)).await;
    let high = env.submit(task(Q, 1).priority(9)).await;
    let running = env.claim(Q, "w", 1).await;
    let next = env.finish(Q, "w", &running[0], 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, high);
    assert_eq!(env.zrange(Q, "pending").await, vec![low]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn the_most_free_worker_is_chosen() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 2, &[]).await;
    env.register(Q, "w2", 5, &[]).await;
    env.register(Q, "w3", 3, &[]).await;
    let mut got = Vec::new();
    for _ in 0..11 {
        got.push(put(&env, task(Q, 1)).await.1);
    }
    // Free before each task (ties go to the worker assigned least recently):
    // (2,5,3) (2,4,3) (2,3,3) (2,3,2) (2,2,2) (1,2,2) (1,2,1) (1,1,1) (0,1,1) (0,1,0) full.
    assert_eq!(
        got,
        vec![
            on("w2"),
            on("w2"),
            on("w3"),
            on("w2"),
            on("w1"),
            on("w3"),
            on("w2"),
            on("w1"),
            on("w3"),
            on("w2"),
            Placement::Pending,
        ]
    );
    for (w, cap) in [("w1", 2), ("w2", 5), ("w3", 3)] {
        assert_eq!(env.worker_int(Q, w, "assigned").await, cap);
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn equal_workers_share_evenly() {
    let env = Env::start().await;
    for w in ["a", "b", "c"] {
        env.register(Q, w, 2, &[]).await;
    }
    for round in 1..=2 {
        let mut ws = Vec::new();
        for _ in 0..3 {
            match put(&env, task(Q, 1)).await.1 {
                Placement::Assigned(w) => ws.push(w),
                other => panic!("not placed: {other:?}"),
            }
        }
        ws.sort();
        assert_eq!(ws, vec!["a", "b", "c"], "round {round}");
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn equal_idle_workers_take_turns() {
    let mut env = Env::start().await;
    for w in ["a", "b", "c"] {
        env.register(Q, w, 1, &[]).await;
    }
    // One task at a time: each goes to the idle worker assigned least recently.
    let mut ws = Vec::new();
    for _ in 0..6 {
        let w = match put(&env, task(Q, 1)).await.1 {
            Placement::Assigned(w) => w,
            other => panic!("not placed: {other:?}"),
        };
        let t = env.claim(Q, &w, 1).await;
        assert!(env.finish(Q, &w, &t[0], 1).await.is_empty());
        ws.push(w);
    }
    let mut first: Vec<&String> = ws[..3].iter().collect();
    first.sort();
    assert_eq!(first, vec!["a", "b", "c"], "{ws:?}");
    assert_eq!(ws[3..], ws[..3], "{ws:?}");
    for w in ["a", "b", "c"] {
        assert_eq!(env.worker_int(Q, w, "finished").await, 2);
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_task_goes_only_where_its_cost_fits() {
    let mut env = Env::start().await;
    env.register(Q, "c1", 1, &[]).await;
    env.register(Q, "c2", 2, &[]).await;
    env.register(Q, "c4", 4, &[]).await;
    let (big1, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, on("c4"));
    let (big2, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, Placement::Pending);
    let (big3, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, Placement::Pending);
    // c4 is full: a cost-2 task takes c2, the most free of those it fits.
    let (_, p) = put(&env, task(Q, 2)).await;
    assert_eq!(p, on("c2"));
    let (_, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("c1"));
    let (_, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    env.assert_sound(Q).await;

    // Run c4's work: each cost-4 task follows on c4, in order, ahead of the cost-1 task.
    let mut ran = Vec::new();
    let mut running = env.claim(Q, "c4", 1).await;
    for _ in 0..3 {
        assert_eq!(running.len(), 1);
        let t = running.remove(0);
        assert_eq!(t.cost, 4);
        ran.push(t.id.clone());
        running = env.finish(Q, "c4", &t, 1).await;
        env.assert_sound(Q).await;
    }
    assert_eq!(ran, vec![big1.clone(), big2.clone(), big3.clone()]);
    // Then c4, now the most free, takes the waiting cost-1 task.
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].cost, 1);
    for id in [&big1, &big2, &big3] {
        assert_eq!(env.worker_of(Q, id).await.as_deref(), Some("c4"));
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn tags_are_respected() {
    let mut env = Env::start().await;
    env.register(Q, "plain", 8, &[]).await;
    env.register(Q, "g", 4, &["gpu"]).await;
    env.register(Q, "gs", 2, &["gpu", "ssd"]).await;

    // gpu+ssd: only gs, though g has more room and carries gpu.
    let (a, p) = put(&env, task(Q, 1).tag("ssd").tag("gpu")).await;
    assert_eq!(p, on("gs"));
    // gpu: the most free of g and gs; never plain, though plain has the most room.
    let (b, p) = put(&env, task(Q, 1).tag("gpu")).await;
    assert_eq!(p, on("g"));
    let (c, p) = put(&env, task(Q, 1).tag("ssd")).await;
    assert_eq!(p, on("gs"));
    // gs is full: this one waits for it (it is capable, so it is not parked).
    let (d, p) = put(&env, task(Q, 1).tag("gpu").tag("ssd")).await;
    assert_eq!(p, Placement::Pending);
    // No tags: any worker; plain has the most room.
    let (e, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("plain"));
    let (f, p) = put(&env, task(Q, 3).tag("gpu")).await;
    assert_eq!(p, on("g"));
    let (g, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, on("plain"));
    // gpu, but g and gs are full.
    let (h, p) = put(&env, task(Q, 1).tag("gpu")).await;
    assert_eq!(p, Placement::Pending);

    assert_eq!(env.inbox(Q, "gs").await, vec![a, c.clone()]);
    assert_eq!(env.inbox(Q, "g").await, vec![b, f]);
    assert_eq!(env.inbox(Q, "plain").await, vec![e, g]);
    assert_eq!(env.zrange(Q, "pending").await, vec![d.clone(), h.clone()]);
    env.assert_sound(Q).await;

    // gs frees one unit: d (gpu+ssd) goes there.
    let running = env.claim(Q, "gs", 2).await;
    let done = running.iter().find(|t| t.id == c).expect("c running");
    let next = env.finish(Q, "gs", done, 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, d);
    assert_eq!(env.zrange(Q, "pending").await, vec![h]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_blocked_head_task_reserves_its_worker_and_is_not_starved() {
    let mut env = Env::start().await;
    env.register(Q, "big", 4, &[]).await;
    env.register(Q, "small", 2, &[]).await;
    let (t0, p) = put(&env, task(Q, 3)).await;
    assert_eq!(p, on("big"));

    // Cost 4 fits only `big`, which has 1 free: blocked, and `big` is reserved for it.
    let (huge, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, Placement::Pending);
    // Small tasks behind it go around it, to `small`...
    let (s1, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("small"));
    let (s2, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("small"));
    // ...but not to `big`, though it has a free unit: that would starve `huge`.
    let (s3, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    assert_eq!(env.inbox(Q, "big").await, vec![t0.clone()]);
    assert_eq!(env.worker_int(Q, "big", "assigned").await, 3);
    assert_eq!(
        env.zrange(Q, "pending").await,
        vec![huge.clone(), s3.clone()]
    );
    env.assert_sound(Q).await;

    // `small` frees a unit: s3 runs there; `big` stays reserved.
    let on_small = env.claim(Q, "small", 2).await;
    assert_eq!(on_small[0].id, s1);
    let next = env.finish(Q, "small", &on_small[0], 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, s3);
    let (s4, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    assert_eq!(env.worker_int(Q, "big", "assigned").await, 3);
    env.assert_sound(Q).await;

    // `big` finishes t0: `huge` is placed on it at once, and handed over in the same call.
    let on_big = env.claim(Q, "big", 1).await;
    assert_eq!(on_big[0].id, t0);
    let next = env.finish(Q, "big", &on_big[0], 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].id.as_str(), next[0].cost), (huge.as_str(), 4));
    assert_eq!(env.worker_int(Q, "big", "assigned").await, 4);
    assert_eq!(env.zrange(Q, "pending").await, vec![s4.clone()]);
    env.assert_sound(Q).await;

    // And the small task behind follows when `small` frees up.
    let next = env.finish(Q, "small", &on_small[1], 1).await;
    assert_eq!(on_small[1].id, s2);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, s4);
    assert!(env.zrange(Q, "pending").await.is_empty());
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn the_reserved_worker_is_the_most_free_capable_one() {
    let mut env = Env::start().await;
    env.register(Q, "a", 5, &[]).await;
    env.register(Q, "b", 4, &[]).await;
    env.register(Q, "tiny", 1, &[]).await;
    let (_, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, on("a"));
    let (y, p) = put(&env, task(Q, 2)).await;
    assert_eq!(p, on("b"));
    // Free: a 1, b 2, tiny 1. Cost 4 fits nowhere now; b (2 free, capacity 4) is reserved.
    let (huge, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, Placement::Pending);
    // Small tasks use a and tiny, never b.
    let mut ws = Vec::new();
    for _ in 0..2 {
        match put(&env, task(Q, 1)).await.1 {
            Placement::Assigned(w) => ws.push(w),
            other => panic!("not placed: {other:?}"),
        }
    }
    ws.sort();
    assert_eq!(ws, vec!["a", "tiny"]);
    let (s3, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    assert_eq!(env.inbox(Q, "b").await, vec![y.clone()]);
    env.assert_sound(Q).await;

    // b finishes y: huge goes to b.
    let t = env.claim(Q, "b", 1).await;
    assert!(env.finish(Q, "b", &t[0], 0).await.is_empty());
    assert_eq!(env.worker_of(Q, &huge).await.as_deref(), Some("b"));
    assert_eq!(env.zrange(Q, "pending").await, vec![s3]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn tasks_no_worker_could_run_are_parked_and_block_nothing() {
    let mut env = Env::start().await;
    // 40 tasks no worker will be able to run, ahead (higher priority) of 3 small ones.
    let bigs: Vec<TaskSpec> = (0..40).map(|_| task(Q, 5).priority(10)).collect();
    env.client.submit_many(&bigs).await.expect("submit");
    let smalls: Vec<TaskSpec> = (0..3).map(|_| task(Q, 1)).collect();
    env.client.submit_many(&smalls).await.expect("submit");
    assert_eq!(env.zrange(Q, "pending").await.len(), 43);

    env.register(Q, "w", 2, &[]).await;
    let big_ids: Vec<String> = bigs.iter().map(|s| s.id.clone()).collect();
    assert_eq!(env.zrange(Q, "parked").await, big_ids);
    assert_eq!(
        env.inbox(Q, "w").await,
        vec![smalls[0].id.clone(), smalls[1].id.clone()]
    );
    assert_eq!(env.zrange(Q, "pending").await, vec![smalls[2].id.clone()]);
    env.assert_sound(Q).await;

    // Submitted while the worker is full, such a task is parked all the same.
    let (late, p) = put(&env, task(Q, 3).priority(100)).await;
    assert_eq!(p, Placement::Parked);
    let t = env.claim(Q, "w", 2).await;
    let next = env.finish(Q, "w", &t[0], 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, smalls[2].id);
    assert_eq!(env.zrange(Q, "parked").await.len(), 41);
    assert!(env.zrange(Q, "parked").await.contains(&late));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn look_ahead_stops_after_32_blocked_shapes() {
    let mut env = Env::start().await;
    env.register(Q, "big", 40, &[]).await;
    env.register(Q, "small", 1, &[]).await;
    let (hold, p) = put(&env, task(Q, 40)).await;
    assert_eq!(p, on("big"));
    // 31 tasks of distinct costs only `big` can run, each a blocked shape: a small task
    // behind them is still seen.
    let blocked: Vec<TaskSpec> = (2..=32).map(|c| task(Q, c)).collect();
    env.client.submit_many(&blocked).await.expect("submit");
    let (s1, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("small"));
    // One more shape: 32 ahead now; a small task behind them is not looked at, even with
    // `small` free again.
    env.submit(task(Q, 33)).await;
    let t = env.claim(Q, "small", 1).await;
    assert_eq!(t[0].id, s1);
    env.finish(Q, "small", &t[0], 1).await;
    let (s2, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    assert!(env.beat(Q, "small").await.is_some());
    assert_eq!(env.worker_int(Q, "small", "assigned").await, 0);
    env.assert_sound(Q).await;

    // `big` frees its 40 units: costs 2..=8 (35 units) go there, 9..=33 are 25 blocked
    // shapes, fewer than 32, so the small task behind them is placed.
    let t = env.claim(Q, "big", 1).await;
    assert_eq!(t[0].id, hold);
    env.finish(Q, "big", &t[0], 0).await;
    assert_eq!(env.worker_int(Q, "big", "assigned").await, 35);
    assert_eq!(env.worker_of(Q, &s2).await.as_deref(), Some("small"));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn blocked_tasks_of_one_shape_use_no_look_ahead_but_the_scan_is_bounded() {
    let mut env = Env::start().await;
    env.register(Q, "big", 4, &[]).await;
    env.register(Q, "small", 1, &[]).await;
    let (_, p) = put(&env, task(Q, 4)).await;
    assert_eq!(p, on("big"));
    // 200 blocked tasks of one shape ahead: the small task behind them runs at once.
    let same: Vec<TaskSpec> = (0..200).map(|_| task(Q, 4)).collect();
    env.client.submit_many(&same).await.expect("submit");
    let (s1, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, on("small"));
    // 256 or more tasks ahead are more than one call reads: the next small task waits.
    let more: Vec<TaskSpec> = (0..56).map(|_| task(Q, 4)).collect();
    env.client.submit_many(&more).await.expect("submit");
    let t = env.claim(Q, "small", 1).await;
    assert_eq!(t[0].id, s1);
    env.finish(Q, "small", &t[0], 1).await;
    let (s2, p) = put(&env, task(Q, 1)).await;
    assert_eq!(p, Placement::Pending);
    assert_eq!(env.worker_int(Q, "small", "assigned").await, 0);
    assert_eq!(
        env.task_record(Q, &s2).await.state,
        ballast::TaskState::Pending
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn only_the_bench_build_reads_a_bench_policy() {
    let mut env = Env::start().await;
    // A production handle refuses to set a policy, and writes nothing.
    let e = env
        .store
        .set_bench_policy(Q, Some("round-robin"), 1)
        .await
        .expect_err("a production handle");
    assert!(e.to_string().contains("Store::for_bench"), "{e}");
    assert!(env.keys().await.is_empty());
    let bench = env.store.for_bench();
    bench
        .set_bench_policy(Q, Some("round-robin"), 1)
        .await
        .expect("a bench handle");
    env.register(Q, "big", 8, &[]).await;
    env.register(Q, "small", 1, &[]).await;
    // The production build places by free capacity whatever the key says: both on `big`.
    for _ in 0..2 {
        assert_eq!(put(&env, task(Q, 1)).await.1, on("big"));
    }
    // The bench build follows the policy: round-robin over the sorted workers.
    let bench = ballast::Client::new(bench);
    let placed = [
        bench.submit(&task(Q, 1)).await.expect("submit"),
        bench.submit(&task(Q, 1)).await.expect("submit"),
    ];
    assert_eq!(placed, [on("small"), on("big")]);
}
