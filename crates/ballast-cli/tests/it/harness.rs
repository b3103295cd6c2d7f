//! Shared test harness: a private Redis per test, a store and a raw connection on it, and
//! helpers that seed and read the queue's keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use ballast::store::{prefix, ClaimedTask, Finish, Leave, Outcome, Store};
use ballast::testing::RedisServer;
use ballast::{Client, Placement, TaskRecord, TaskSpec};
use redis::AsyncCommands;

/// A private Redis with a store and a raw connection on it. Dropping it kills the server.
pub struct Env {
    pub store: Store,
    pub client: Client,
    pub raw: redis::aio::MultiplexedConnection,
    pub url: String,
    // Last, so the server outlives the connections above while they drop.
    _server: RedisServer,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(&[]).await
    }

    /// A private Redis started with extra `redis-server` arguments.
    pub async fn start_with(extra: &[&str]) -> Env {
        let server = RedisServer::start_with(extra).expect("start redis-server");
        let url = server.url();
        let store = Store::connect(&url).await.expect("connect");
        let raw = redis::Client::open(url.as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        Env {
            client: Client::new(store.clone()),
            store,
            raw,
            url,
            _server: server,
        }
    }

    /// Stops Redis with SHUTDOWN and starts it again on the same socket and folder.
    pub fn restart_redis(&mut self) {
        tokio::task::block_in_place(|| self._server.restart()).expect("restart redis");
    }

    /// Stops Redis with SHUTDOWN; it stays down until `restart_redis`.
    pub fn stop_redis(&mut self) {
        tokio::task::block_in_place(|| self._server.stop()).expect("stop redis");
    }

    /// The name of every key in this Redis, sorted: the whole key list, for exact asserts.
    pub async fn keys(&mut self) -> Vec<String> {
        let mut keys: Vec<String> = self.raw.keys("*").await.expect("keys");
        keys.sort();
        keys
    }

    pub async fn zrange(&mut self, queue: &str, name: &str) -> Vec<String> {
        self.raw
            .zrange(qkey(queue, name), 0, -1)
            .await
            .expect("zrange")
    }

    /// Ids of the tasks worker `w` of `queue` holds, sorted (its held set keeps a token of
    /// lease, cost and id per task).
    pub async fn held(&mut self, queue: &str, w: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .smembers(queue, &format!("worker:{w}:tasks"))
            .await
            .into_iter()
            .map(|t| t.splitn(3, ' ').nth(2).expect("held token").to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Ids of the running tasks of `queue`, earliest started first (then by id). Running
    /// tasks have no index, and the library's own listing is among what the tests check, so
    /// this reads every task record of the queue (a test's Redis holds few), and checks that
    /// the library lists the same tasks.
    pub async fn running(&mut self, queue: &str) -> Vec<String> {
        let prefix = qkey(queue, "task:");
        let keys: Vec<String> = self.raw.keys(format!("{prefix}*")).await.expect("keys");
        let mut running = Vec::new();
        for key in keys {
            let id = key[prefix.len()..].to_string();
            let h = self.task_hash(queue, &id).await;
            if h.get("state").map(String::as_str) == Some("running") {
                let started: i64 = h["started_at"].parse().expect("started_at");
                running.push((started, id));
            }
        }
        running.sort();
        let running: Vec<String> = running.into_iter().map(|(_, id)| id).collect();
        // The library lists the same tasks (Store::tasks reads every worker's held set).
        let mut listed: Vec<String> = self
            .store
            .tasks(queue, Some(ballast::TaskState::Running), 1000)
            .await
            .expect("running tasks")
            .into_iter()
            .map(|t| t.id)
            .collect();
        let mut expect = running.clone();
        listed.sort();
        expect.sort();
        assert_eq!(listed, expect, "Store::tasks(Running) of {queue}");
        running
    }

    /// The list `name` of `queue` (succeeded and cancelled tasks, in finish order).
    pub async fn list(&mut self, queue: &str, name: &str) -> Vec<String> {
        self.raw
            .lrange(qkey(queue, name), 0, -1)
            .await
            .expect("lrange")
    }

    pub async fn hash(&mut self, key: &str) -> HashMap<String, String> {
        self.raw.hgetall(key).await.expect("hgetall")
    }

    /// A task's record, its `run` field spread into the parts it packs (lease, attempts,
    /// runs, started_at, worker) so that tests name what they check; started_at is left out
    /// while it is "-" (not started).
    pub async fn task_hash(&mut self, queue: &str, id: &str) -> HashMap<String, String> {
        let mut h = self.hash(&qkey(queue, &format!("task:{id}"))).await;
        if let Some(run) = h.remove("run") {
            let parts: Vec<&str> = run.splitn(5, ' ').collect();
            assert_eq!(parts.len(), 5, "run {run:?}");
            for (name, part) in RUN_PARTS.into_iter().zip(parts) {
                if part != "-" {
                    h.insert(name.to_string(), part.to_string());
                }
            }
        }
        h
    }

    /// Sets one part of task `id`'s `run` field (one of the names task_hash() gives them).
    pub async fn set_run_part(&mut self, queue: &str, id: &str, part: &str, value: impl ToString) {
        let key = qkey(queue, &format!("task:{id}"));
        let run: String = self.raw.hget(&key, "run").await.expect("hget run");
        let mut parts: Vec<String> = run.splitn(5, ' ').map(String::from).collect();
        let at = RUN_PARTS
            .iter()
            .position(|p| *p == part)
            .expect("a part of run");
        parts[at] = value.to_string();
        let _: () = self
            .raw
            .hset(&key, "run", parts.join(" "))
            .await
            .expect("hset run");
    }

    pub async fn worker_hash(&mut self, queue: &str, w: &str) -> HashMap<String, String> {
        self.hash(&qkey(queue, &format!("worker:{w}"))).await
    }

    pub async fn inbox(&mut self, queue: &str, w: &str) -> Vec<String> {
        self.list(queue, &format!("worker:{w}:inbox")).await
    }

    /// Registers a worker with the default dead-after.
    pub async fn register(&self, queue: &str, w: &str, capacity: i64, tags: &[&str]) {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        self.store
            .register_worker(queue, w, capacity, &tags, Duration::from_secs(5))
            .await
            .expect("register");
    }

    /// Submits a task and returns its id.
    pub async fn submit(&self, spec: TaskSpec) -> String {
        self.client.submit(&spec).await.expect("submit");
        spec.id
    }

    /// Asserts the queue's invariants hold.
    pub async fn assert_sound(&self, queue: &str) {
        let bad = self.store.check_queue(queue).await.expect("check");
        assert!(bad.is_empty(), "invariants broken: {bad:#?}");
    }
}

/// How long `eventually` waits in the tests: long enough never to cut a slow but working run
/// short, it only turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it is true; panics naming `what` once `timeout` has passed
/// without it, so a condition that never comes fails the test instead of hanging it.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A cost-`cost` task of kind `noop` on `queue`.
pub fn task(queue: &str, cost: i64) -> TaskSpec {
    TaskSpec::new(queue, "noop").cost(cost)
}

/// Free-capacity index score multiplier (lib.lua `SHIFT`).
pub const SHIFT: f64 = 4_294_967_296.0;

/// Pending-order score multiplier (lib.lua `ORDER_SHIFT`).
pub const ORDER_SHIFT: i64 = 1 << 40;

/// The parts of a task's `run` field, in order (lib.lua's run_text()).
const RUN_PARTS: [&str; 5] = ["lease", "attempts", "runs", "started_at", "worker"];

/// Key `name` of `queue`: `ballast:{queue}:<name>`.
pub fn qkey(queue: &str, name: &str) -> String {
    format!("{}{name}", prefix(queue))
}

/// The whole expected key list: `ballast:queues` and the named keys of `queue`, sorted.
/// Name every key explicitly, including `epoch`: the queue's epoch counter exists once any
/// worker has registered and stays after every worker is gone.
pub fn expect_keys(queue: &str, names: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = names.iter().map(|n| qkey(queue, n)).collect();
    keys.push("ballast:queues".to_string());
    keys.sort();
    keys
}

/// The free-index score lib.lua gives a worker with `free` units and last assignment `tick`.
pub fn free_score(free: i64, tick: i64) -> f64 {
    free as f64 * SHIFT + (SHIFT - 1.0 - tick as f64)
}

/// The pending-order score of a task of `priority` that was the queue's `seq`-th submission.
pub fn order_score(priority: i64, seq: i64) -> i64 {
    (1000 - priority) * ORDER_SHIFT + seq
}

/// A map of owned strings, for comparing whole hashes.
pub fn strmap(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Removes the time field `field` from a hash, asserting it lies within `lo..=hi` (ms).
pub fn take_time(h: &mut HashMap<String, String>, field: &str, lo: i64, hi: i64) -> i64 {
    let v: i64 = h
        .remove(field)
        .unwrap_or_else(|| panic!("field {field} missing"))
        .parse()
        .unwrap_or_else(|_| panic!("field {field} is not an integer"));
    assert!(lo <= v && v <= hi, "{field}={v} is outside {lo}..={hi}");
    v
}

impl Env {
    /// The Redis server's clock in milliseconds (the clock the scripts use).
    pub async fn now_ms(&mut self) -> i64 {
        let (s, us): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.raw)
            .await
            .expect("time");
        s * 1000 + us / 1000
    }

    /// Members of the set `name` of `queue`, sorted.
    pub async fn smembers(&mut self, queue: &str, name: &str) -> Vec<String> {
        let mut m: Vec<String> = self
            .raw
            .smembers(qkey(queue, name))
            .await
            .expect("smembers");
        m.sort();
        m
    }

    /// The sorted set `name` of `queue` with its scores, in order.
    pub async fn zscores(&mut self, queue: &str, name: &str) -> Vec<(String, f64)> {
        self.raw
            .zrange_withscores(qkey(queue, name), 0, -1)
            .await
            .expect("zrange withscores")
    }

    /// Every key with its type and full contents: two snapshots are equal exactly when
    /// nothing was written in between.
    pub async fn snapshot(&mut self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for k in self.keys().await {
            let ty: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut self.raw)
                .await
                .expect("type");
            let body = match ty.as_str() {
                "string" => {
                    let v: String = self.raw.get(&k).await.expect("get");
                    v
                }
                "hash" => {
                    let v: BTreeMap<String, String> = self.raw.hgetall(&k).await.expect("hgetall");
                    format!("{v:?}")
                }
                "list" => {
                    let v: Vec<String> = self.raw.lrange(&k, 0, -1).await.expect("lrange");
                    format!("{v:?}")
                }
                "set" => {
                    let v: BTreeSet<String> = self.raw.smembers(&k).await.expect("smembers");
                    format!("{v:?}")
                }
                "zset" => {
                    let v: Vec<(String, String)> =
                        self.raw.zrange_withscores(&k, 0, -1).await.expect("zrange");
                    format!("{v:?}")
                }
                other => panic!("unexpected type {other} of {k}"),
            };
            out.insert(k, format!("{ty} {body}"));
        }
        out
    }

    /// The worker's current epoch (0 when it is not registered).
    pub async fn epoch(&self, queue: &str, w: &str) -> u64 {
        epoch_of(&self.store, queue, w).await
    }

    /// A heartbeat under the worker's current epoch: `Some(ids asked to stop)`, or `None`
    /// when Redis does not know the worker.
    pub async fn beat(&self, queue: &str, w: &str) -> Option<Vec<String>> {
        let epoch = self.epoch(queue, w).await;
        self.store
            .heartbeat_worker(queue, w, epoch)
            .await
            .expect("beat")
    }

    /// Seeds the worker's last heartbeat `age_ms` in the past (server clock), in its record
    /// and the `heartbeats` index; returns that time.
    pub async fn age_heartbeat(&mut self, queue: &str, w: &str, age_ms: i64) -> i64 {
        let at = self.now_ms().await - age_ms;
        let _: () = self
            .raw
            .zadd(qkey(queue, "heartbeats"), w, at)
            .await
            .expect("zadd");
        let _: () = self
            .raw
            .hset(qkey(queue, &format!("worker:{w}")), "heartbeat_at", at)
            .await
            .expect("hset");
        at
    }

    /// The typed record of a task that must exist.
    pub async fn task_record(&self, queue: &str, id: &str) -> TaskRecord {
        self.store
            .task(queue, id)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("task {id} does not exist"))
    }

    /// Claims up to `max` tasks from the worker's inbox.
    pub async fn claim(&self, queue: &str, w: &str, max: usize) -> Vec<ClaimedTask> {
        let epoch = self.epoch(queue, w).await;
        self.store
            .claim_tasks(queue, w, epoch, &[], max)
            .await
            .expect("claim")
    }

    /// Reports `outcome` for a claimed task under the worker's current epoch, claiming up to
    /// `claim_max` next tasks; returns what Redis answered (recorded or stale).
    #[must_use]
    pub async fn report(
        &self,
        queue: &str,
        w: &str,
        task: &ClaimedTask,
        outcome: &Outcome,
        claim_max: usize,
    ) -> Finish {
        self.store
            .finish_task(
                queue,
                w,
                self.epoch(queue, w).await,
                task,
                outcome,
                claim_max,
            )
            .await
            .expect("finish")
    }

    /// Reports several outcomes of worker `w` in one call under its current epoch, claiming
    /// up to `claim_max` next tasks; returns which were recorded and the claimed tasks.
    #[must_use]
    pub async fn report_many(
        &self,
        queue: &str,
        w: &str,
        reports: &[(&ClaimedTask, &Outcome)],
        claim_max: usize,
    ) -> (Vec<bool>, Vec<ClaimedTask>) {
        self.store
            .finish_tasks(queue, w, self.epoch(queue, w).await, reports, claim_max)
            .await
            .expect("finish")
    }

    /// Finishes a claimed task successfully with result `null`, claiming up to `claim_max`
    /// next tasks; panics unless it was recorded. Returns the newly claimed tasks.
    pub async fn finish(
        &self,
        queue: &str,
        w: &str,
        task: &ClaimedTask,
        claim_max: usize,
    ) -> Vec<ClaimedTask> {
        let ok = Outcome::Succeeded("null".into());
        match self.report(queue, w, task, &ok, claim_max).await {
            Finish::Recorded(next) => next,
            Finish::Stale(_) => panic!("finishing {} on {w} was refused as stale", task.id),
        }
    }

    /// Drains or removes the worker under its current epoch; returns how many tasks it
    /// handed back, or `None` when Redis refused the epoch.
    #[must_use]
    pub async fn leave(&self, queue: &str, w: &str, how: Leave) -> Option<u64> {
        self.store
            .leave_worker(queue, w, self.epoch(queue, w).await, how)
            .await
            .expect("leave")
    }

    /// The worker each task is assigned to or runs on (`None` for a task with no worker).
    pub async fn worker_of(&mut self, queue: &str, id: &str) -> Option<String> {
        self.task_hash(queue, id)
            .await
            .remove("worker")
            .filter(|w| !w.is_empty())
    }

    /// A worker hash field as an integer.
    pub async fn worker_int(&mut self, queue: &str, w: &str, field: &str) -> i64 {
        self.worker_hash(queue, w)
            .await
            .get(field)
            .unwrap_or_else(|| panic!("worker {w} has no {field}"))
            .parse()
            .expect("integer field")
    }
}

/// Submits a task and returns its id and where it went.
pub async fn put(env: &Env, spec: TaskSpec) -> (String, Placement) {
    let placed = env.client.submit(&spec).await.expect("submit");
    (spec.id, placed)
}

/// The placement of a task assigned to worker `w`.
pub fn on(w: &str) -> Placement {
    Placement::Assigned(w.to_string())
}

/// A worker's current epoch, 0 when it is not registered.
pub async fn epoch_of(store: &Store, queue: &str, w: &str) -> u64 {
    store
        .workers(queue)
        .await
        .expect("workers")
        .into_iter()
        .find(|r| r.id == w)
        .map_or(0, |r| r.epoch)
}

/// The function libraries `FUNCTION LIST` shows, each as its name and the names of its
/// functions (RESP2 gives each entry as a flat key-value array, RESP3 as a map: both read).
pub async fn function_libraries(env: &mut Env) -> Vec<(String, Vec<String>)> {
    let libraries: Vec<BTreeMap<String, redis::Value>> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut env.raw)
        .await
        .expect("list");
    libraries
        .iter()
        .map(|lib| {
            let name: String =
                redis::from_redis_value_ref(&lib["library_name"]).expect("library_name");
            let functions: Vec<BTreeMap<String, redis::Value>> =
                redis::from_redis_value_ref(&lib["functions"]).expect("functions");
            let names = functions
                .iter()
                .map(|f| redis::from_redis_value_ref(&f["name"]).expect("function name"))
                .collect();
            (name, names)
        })
        .collect()
}
