//! apalis 1.0 (apalis-redis 1.0) on the workloads of `ballast bench`: submit one by one,
//! submit in batches of 1,000, a drain of pre-submitted no-op jobs by one worker at
//! concurrency 16, 64, 256 and 1024, and pickup latency at 1,000 jobs/s. Each workload runs
//! with apalis-redis's default `Config` and again with `lock_tasks(false)`.
//!
//! It starts a private redis-server on a unix socket in a temporary folder (FLUSHALL
//! between workloads), so it never touches a Redis you run, and reads Redis CPU and
//! command counts from INFO before and after each workload.
//!
//! Usage: apalis-peer-bench [N] [--json] [--latency-secs S] [--latency-modes pubsub,10]

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage, factory::RedisStorageFactory};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Versions resolved in Cargo.lock; printed so a result carries what produced it.
const VERSIONS: &str = "apalis 1.0.0, apalis-core 1.0.0, apalis-redis 1.0.0, redis-rs 1.8.1";

/// The queue name has no ':' because the pubsub factory finds a queue by splitting the
/// channel name on ':' (the default name, the Rust type path, contains "::").
const QUEUE: &str = "bench";

/// The same fields as the BullMQ script's payload, plus the send time the latency
/// workload needs (0 elsewhere): 104 bytes of JSON.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Payload {
    user: String,
    action: String,
    width: u32,
    height: u32,
    pad: String,
    sent_us: u64,
}

fn payload(i: usize) -> Payload {
    Payload {
        user: format!("user-{i:08}"),
        action: "resize".into(),
        width: 640,
        height: 480,
        pad: "xxxxxxxxxxxxxxxx".into(),
        sent_us: 0,
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

// What the handler records. Statics, because apalis builds the handler's service itself and
// a no-op job should not pay for more than an atomic add and a short lock.
static DONE: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static DUPES: AtomicU64 = AtomicU64::new(0);
static SEEN: Mutex<Vec<bool>> = Mutex::new(Vec::new());
static LATENCIES: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static ALL_DONE: Notify = Notify::const_new();
// The running worker's context, kept so the benchmark can stop it once Redis shows every
// job done (stopping from inside the handler would cut off the last acknowledgements).
static WORKER: Mutex<Option<WorkerContext>> = Mutex::new(None);

async fn job(p: Payload, worker: WorkerContext) -> Result<(), BoxDynError> {
    if p.sent_us != 0 {
        let waited = now_us().saturating_sub(p.sent_us);
        LATENCIES.lock().unwrap().push(waited);
    }
    let idx: usize = p.user[5..].parse()?;
    {
        let mut seen = SEEN.lock().unwrap();
        if let Some(s) = seen.get_mut(idx) {
            if *s {
                DUPES.fetch_add(1, Ordering::Relaxed);
            }
            *s = true;
        }
    }
    {
        let mut w = WORKER.lock().unwrap();
        if w.is_none() {
            *w = Some(worker);
        }
    }
    if DONE.fetch_add(1, Ordering::SeqCst) + 1 == TARGET.load(Ordering::SeqCst) {
        ALL_DONE.notify_one();
    }
    Ok(())
}

fn reset_counters(n: usize) {
    DONE.store(0, Ordering::SeqCst);
    DUPES.store(0, Ordering::SeqCst);
    TARGET.store(n as u64, Ordering::SeqCst);
    *SEEN.lock().unwrap() = vec![false; n];
    LATENCIES.lock().unwrap().clear();
    *WORKER.lock().unwrap() = None;
}

/// A private redis-server, killed and its folder removed on drop (also on panic).
struct Server {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Server {
    fn start() -> Res<Self> {
        let dir = std::env::temp_dir().join(format!("apalis-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let sock = dir.join("r.sock");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Server { child, dir, sock };
        let t0 = Instant::now();
        while !server.sock.exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not create its socket within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.sock.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Redis CPU seconds and per-command call counts at one moment.
struct Snap {
    cpu: f64,
    calls: BTreeMap<String, u64>,
}

async fn snap(admin: &mut MultiplexedConnection) -> Res<Snap> {
    // One INFO call for both sections, so the two readings are taken at the same time.
    let text: String = redis::cmd("INFO").arg("cpu").arg("commandstats").query_async(admin).await?;
    let mut cpu = 0.0;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("used_cpu_sys:").or(line.strip_prefix("used_cpu_user:")) {
            cpu += v.trim().parse::<f64>()?;
        } else if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, stats) = rest.split_once(':').ok_or("bad cmdstat line")?;
            let c = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .ok_or("cmdstat without calls")?;
            calls.insert(name.to_string(), c.parse()?);
        }
    }
    Ok(Snap { cpu, calls })
}

async fn flushall(admin: &mut MultiplexedConnection) -> Res<()> {
    let _: () = redis::cmd("FLUSHALL").query_async(admin).await?;
    Ok(())
}

/// One result line.
struct Row {
    setting: &'static str,
    workload: String,
    n: usize,
    seconds: f64,
    us_per_task: f64,
    cmds_per_task: f64,
    /// Per-command call deltas (commands run inside Lua scripts are counted by Redis too).
    breakdown: BTreeMap<String, u64>,
    extra: Value,
    note: String,
    /// False when the workload did not finish (the rate is then not a result).
    ok: bool,
    /// False for the latency rows, whose rate is the offered 1,000/s, not a throughput.
    throughput: bool,
}

impl Row {
    fn rate(&self) -> f64 {
        self.n as f64 / self.seconds
    }
}

/// Builds a row from two snapshots, leaving out the benchmark's own INFO call and the
/// `own_scard` SCARD polls it made while waiting for the done set to fill.
fn row(
    setting: &'static str,
    workload: impl Into<String>,
    n: usize,
    seconds: f64,
    s0: &Snap,
    s1: &Snap,
    own_scard: u64,
) -> Row {
    let mut breakdown = BTreeMap::new();
    for (k, v1) in &s1.calls {
        let mut d = v1 - s0.calls.get(k).copied().unwrap_or(0);
        if k == "info" {
            continue;
        }
        if k == "scard" {
            d = d.saturating_sub(own_scard);
        }
        if d > 0 {
            breakdown.insert(k.clone(), d);
        }
    }
    let total: u64 = breakdown.values().sum();
    Row {
        setting,
        workload: workload.into(),
        n,
        seconds,
        us_per_task: (s1.cpu - s0.cpu) * 1e6 / n as f64,
        cmds_per_task: total as f64 / n as f64,
        breakdown,
        extra: json!({}),
        note: String::new(),
        ok: true,
        throughput: true,
    }
}

fn config(locks: bool) -> Config {
    let c = Config::default().queue(QUEUE);
    // Only the one setting is changed; `Config::default()` has lock_tasks = true.
    if locks { c } else { c.lock_tasks(false) }
}

async fn storage(url: &str, cfg: &Config) -> Res<RedisStorage<Payload>> {
    let conn = apalis_redis::connect(url).await?;
    Ok(RedisStorage::new(conn).with_config(cfg.clone()))
}

async fn push_bulk_all(st: &mut RedisStorage<Payload>, n: usize) -> Res<()> {
    for start in (0..n).step_by(1000) {
        let batch: Vec<Payload> = (start..(start + 1000).min(n)).map(payload).collect();
        st.push_bulk(batch).await.map_err(|e| format!("push_bulk: {e}"))?;
    }
    Ok(())
}

/// Submits `n` jobs, one `push` at a time or (`bulk`) in `push_bulk` batches of 1,000.
async fn submit(url: &str, admin: &mut MultiplexedConnection, setting: &'static str, cfg: &Config, n: usize, bulk: bool) -> Res<Row> {
    flushall(admin).await?;
    let mut st = storage(url, cfg).await?;
    let s0 = snap(admin).await?;
    let t0 = Instant::now();
    if bulk {
        push_bulk_all(&mut st, n).await?;
    } else {
        for i in 0..n {
            st.push(payload(i)).await.map_err(|e| format!("push: {e}"))?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let s1 = snap(admin).await?;
    let queued: u64 = redis::cmd("LLEN").arg(cfg.active_jobs_list()).query_async(admin).await?;
    let label = if bulk { "submit bulk 1000 (push_bulk)" } else { "submit one by one" };
    let mut r = row(setting, label, n, secs, &s0, &s1, 0);
    r.extra = json!({ "queued_after": queued });
    Ok(r)
}

/// Waits until the handler has run `TARGET` times, the worker has ended (an error), or
/// `limit` passes.
async fn wait_handlers(worker: &tokio::task::JoinHandle<Result<(), WorkerError>>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if DONE.load(Ordering::SeqCst) >= TARGET.load(Ordering::SeqCst) {
            return true;
        }
        if Instant::now() > deadline || worker.is_finished() {
            return false;
        }
        // A short timeout re-checks the counter, so a permit left from an earlier run or a
        // missed notification costs at most 50 ms, never a hang.
        let _ = tokio::time::timeout(Duration::from_millis(50), ALL_DONE.notified()).await;
    }
}

/// Polls the done set until it holds `n` ids: a job counts as finished when apalis has
/// written its result to Redis, as BullMQ's 'completed' is. Returns (polls, reached).
async fn wait_done_set(admin: &mut MultiplexedConnection, cfg: &Config, n: usize, limit: Duration) -> Res<(u64, bool)> {
    let deadline = Instant::now() + limit;
    let mut polls = 0;
    loop {
        let k: u64 = redis::cmd("SCARD").arg(cfg.done_jobs_set()).query_async(admin).await?;
        polls += 1;
        if k >= n as u64 {
            return Ok((polls, true));
        }
        if Instant::now() > deadline {
            return Ok((polls, false));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls until the worker `name` has registered: apalis-redis's register_worker.lua adds
/// it to the queue's workers sorted set (`ZADD <queue>:workers <now> <name>`). An error if
/// the worker ends first or `limit` passes.
async fn wait_registered(
    admin: &mut MultiplexedConnection,
    cfg: &Config,
    name: &str,
    worker: &tokio::task::JoinHandle<Result<(), WorkerError>>,
    limit: Duration,
) -> Res<()> {
    let key = cfg.workers_set();
    let deadline = Instant::now() + limit;
    loop {
        let seen: Option<f64> = redis::cmd("ZSCORE").arg(&key).arg(name).query_async(admin).await?;
        if seen.is_some() {
            return Ok(());
        }
        if worker.is_finished() {
            return Err(format!("worker {name} ended before it registered in {key}").into());
        }
        if Instant::now() > deadline {
            return Err(format!("worker {name} did not register in {key} within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Stops the worker that ran the handler and waits for it to unregister.
async fn stop_worker(handle: tokio::task::JoinHandle<Result<(), WorkerError>>) -> String {
    let ctx = WORKER.lock().unwrap().take();
    if handle.is_finished() {
        return match handle.await {
            Ok(Ok(())) => "worker ended by itself".into(),
            Ok(Err(e)) => format!("worker failed: {e}"),
            Err(e) => format!("worker task: {e}"),
        };
    }
    match ctx {
        Some(ctx) => {
            if let Err(e) = ctx.stop() {
                return format!("stop failed: {e}");
            }
        }
        None => {
            handle.abort();
            return "worker never ran a job; aborted".into();
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), handle).await {
        Ok(Ok(Ok(()))) => String::new(),
        Ok(Ok(Err(e))) => format!("worker ended with: {e}"),
        Ok(Err(e)) => format!("worker task: {e}"),
        Err(_) => "worker did not stop within 10 s".into(),
    }
}

/// Moves every due job from the scheduled set to the active list, as the first step of
/// apalis-redis's fetch script does, but in chunks. apalis-redis 1.0.0 schedules every push
/// at "now" (push_tasks raises run_at to the current time, so batch_push.lua always takes
/// its ZADD branch), and fetch_next.lua promotes all due jobs with one
/// `RPUSH key unpack(ids)`, which Redis's Lua rejects beyond ~8,000 values ("too many
/// results to unpack"). Done inside the timed window, with the same commands, so that the
/// Redis CPU and command counts still include the promotion every job goes through.
async fn promote_backlog(admin: &mut MultiplexedConnection, cfg: &Config) -> Res<usize> {
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(cfg.scheduled_jobs_set())
        .arg("-inf")
        .arg("+inf")
        .query_async(admin)
        .await?;
    for chunk in ids.chunks(5000) {
        let _: () = redis::pipe()
            .cmd("RPUSH").arg(cfg.active_jobs_list()).arg(chunk).ignore()
            .cmd("ZREM").arg(cfg.scheduled_jobs_set()).arg(chunk).ignore()
            .query_async(admin)
            .await?;
    }
    // The signal list, as the script leaves it after a promotion.
    let _: () = redis::pipe()
        .cmd("DEL").arg(cfg.signal_list()).ignore()
        .cmd("LPUSH").arg(cfg.signal_list()).arg(1).ignore()
        .query_async(admin)
        .await?;
    Ok(ids.len())
}

async fn drain(
    url: &str,
    admin: &mut MultiplexedConnection,
    setting: &'static str,
    cfg: &Config,
    n: usize,
    conc: usize,
    promote: bool,
) -> Res<Row> {
    flushall(admin).await?;
    let mut st = storage(url, cfg).await?;
    push_bulk_all(&mut st, n).await?;
    reset_counters(n);
    let s0 = snap(admin).await?;
    let t0 = Instant::now();
    if promote {
        promote_backlog(admin, cfg).await?;
    }
    // One worker in this process: apalis runs a worker as a future in the application.
    // Jobs run on the worker's own future (no `parallelize`): they are no-ops.
    let worker = WorkerBuilder::new(format!("drain-{conc}"))
        .backend(st)
        .concurrency(conc)
        .build(job);
    let handle = tokio::spawn(worker.run());
    let limit = Duration::from_secs(600);
    let handlers_ok = wait_handlers(&handle, limit).await;
    let handler_secs = t0.elapsed().as_secs_f64();
    let (polls, done_ok) = if handlers_ok {
        wait_done_set(admin, cfg, n, limit).await?
    } else {
        (0, false)
    };
    let secs = t0.elapsed().as_secs_f64();
    let s1 = snap(admin).await?;
    let stop_note = stop_worker(handle).await;
    let processed = DONE.load(Ordering::SeqCst);
    let distinct = SEEN.lock().unwrap().iter().filter(|s| **s).count();
    let dupes = DUPES.load(Ordering::SeqCst);
    let label = if promote { format!("drain c={conc}, promoted*") } else { format!("drain c={conc}") };
    let mut r = row(setting, label, n, secs, &s0, &s1, polls);
    r.ok = handlers_ok && done_ok && distinct == n && dupes == 0;
    r.extra = json!({
        "handler_calls": processed, "distinct_jobs": distinct, "duplicate_runs": dupes,
        "seconds_to_last_handler": handler_secs, "all_handled": handlers_ok, "all_in_done_set": done_ok,
    });
    let mut notes = vec![];
    if !(handlers_ok && done_ok) || distinct != n || dupes != 0 {
        notes.push(format!("INCOMPLETE: {processed} handled, {distinct} distinct, {dupes} dupes"));
    }
    if !stop_note.is_empty() {
        notes.push(stop_note);
    }
    r.note = notes.join("; ");
    Ok(r)
}

/// The latency workload's worker, by the name it registers under.
const LATENCY_WORKER: &str = "latency";

async fn latency(url: &str, admin: &mut MultiplexedConnection, setting: &'static str, cfg: &Config, secs: u64, poll_ms: u64) -> Res<Row> {
    let total = (secs * 1000) as usize;
    flushall(admin).await?;
    reset_counters(total);
    // An idle apalis-redis worker fetches again only when something wakes it: a task
    // finishing, its heartbeat (30 s by default), or a poll strategy. poll_ms = 0 uses the
    // library's pubsub storage from RedisStorageFactory (meant to be woken by the PUBLISH
    // batch_push.lua makes on "<queue>:active"; RESP3 is needed for push messages on its
    // shared connection). In 1.0.0 a push always takes the scheduled (ZADD) branch, which
    // publishes nothing, so this variant shows what the default wake-up gives. Otherwise
    // the plain storage with `poll_with_interval`.
    let handle = if poll_ms == 0 {
        let client = apalis_redis::Client::open(format!("{url}?protocol=resp3"))?;
        let mut factory = RedisStorageFactory::new(client).await?;
        let backend = BackendFactory::<Payload>::create_with_config(&mut factory, cfg.clone())?;
        let worker = WorkerBuilder::new(LATENCY_WORKER).backend(backend).concurrency(16).build(job);
        tokio::spawn(worker.run())
    } else {
        let backend = storage(url, cfg).await?.poll_with_interval(Duration::from_millis(poll_ms));
        let worker = WorkerBuilder::new(LATENCY_WORKER).backend(backend).concurrency(16).build(job);
        tokio::spawn(worker.run())
    };
    let mut st = storage(url, cfg).await?;
    // Waits for the worker to register (its first step, before any fetch), so that
    // start-up is not counted as pickup time.
    wait_registered(admin, cfg, LATENCY_WORKER, &handle, Duration::from_secs(10)).await?;
    let s0 = snap(admin).await?;
    let t0 = Instant::now();
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_micros(i as u64 * 1000)).await;
        let mut p = payload(i);
        p.sent_us = now_us();
        st.push(p).await.map_err(|e| format!("push: {e}"))?;
    }
    let send_secs = t0.elapsed().as_secs_f64();
    let handlers_ok = wait_handlers(&handle, Duration::from_secs(60)).await;
    let (polls, done_ok) = if handlers_ok {
        wait_done_set(admin, cfg, total, Duration::from_secs(60)).await?
    } else {
        (0, false)
    };
    let secs_all = t0.elapsed().as_secs_f64();
    let s1 = snap(admin).await?;
    let stop_note = stop_worker(handle).await;
    let mut lat = LATENCIES.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1] as f64 / 1000.0
        }
    };
    let (p50, p99, max) = (pct(0.50), pct(0.99), pct(1.0));
    let mode = if poll_ms == 0 { "pubsub factory".to_string() } else { format!("poll {poll_ms} ms") };
    let mut r = row(setting, format!("pickup @1k/s, {mode}"), total, secs_all, &s0, &s1, polls);
    r.extra = json!({
        "p50_ms": p50, "p99_ms": p99, "max_ms": max, "samples": lat.len(),
        "send_seconds": send_secs, "offered_rate": 1000, "all_handled": handlers_ok, "all_in_done_set": done_ok,
    });
    r.ok = handlers_ok && done_ok;
    r.throughput = false;
    let mut notes = vec![format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms")];
    if !(handlers_ok && done_ok) {
        notes.push(format!("INCOMPLETE: {} of {total} handled", DONE.load(Ordering::SeqCst)));
    }
    if !stop_note.is_empty() {
        notes.push(stop_note);
    }
    r.note = notes.join("; ");
    Ok(r)
}

fn print_table(rows: &[Row], out: &mut dyn std::io::Write) {
    let _ = writeln!(
        out,
        "{:<10} {:<34} {:>8} {:>11} {:>13} {:>10}  {}",
        "setting", "workload", "n", "tasks/s", "redis us/task", "cmds/task", "notes"
    );
    for r in rows {
        let rate = match (r.ok, r.throughput) {
            (false, _) => "failed".into(),
            (true, false) => "(1k/s)".into(),
            (true, true) => format!("{:.0}", r.rate()),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<34} {:>8} {:>11} {:>13.1} {:>10.1}  {}",
            r.setting,
            r.workload,
            r.n,
            rate,
            r.us_per_task,
            r.cmds_per_task,
            r.note
        );
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut n = 50_000usize;
    let mut as_json = false;
    let mut latency_secs = 20u64;
    // Pickup-latency variants: "pubsub" (the factory's storage) or a poll interval in ms.
    let mut latency_modes: Vec<u64> = vec![0, 10];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => as_json = true,
            "--latency-secs" => latency_secs = args.next().ok_or("--latency-secs needs a value")?.parse()?,
            "--latency-modes" => {
                latency_modes = args
                    .next()
                    .ok_or("--latency-modes needs a value")?
                    .split(',')
                    .map(|m| if m == "pubsub" { Ok(0) } else { m.parse::<u64>() })
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: apalis-peer-bench [N=50000] [--json] [--latency-secs S=20, 0 skips] \
                     [--latency-modes pubsub,10 (pubsub and/or poll intervals in ms)]"
                );
                return Ok(());
            }
            s => n = s.replace(['_', ','], "").parse()?,
        }
    }

    let server = Server::start()?;
    let url = server.url();
    let mut admin = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let redis_version = {
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut admin).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let payload_bytes = serde_json::to_vec(&payload(0))?.len();
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0);
    let mut log: Box<dyn std::io::Write> =
        if as_json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let _ = writeln!(
        log,
        "{VERSIONS}; Redis {redis_version} (private, unix socket); {cores} cores; N={n}; payload {payload_bytes} B JSON"
    );

    let mut rows = Vec::new();
    for (setting, locks) in [("default", true), ("locks off", false)] {
        let cfg = config(locks);
        let _ = writeln!(log, "-- {setting}: {cfg:?}");
        for bulk in [false, true] {
            rows.push(submit(&url, &mut admin, setting, &cfg, n, bulk).await?);
        }
        for conc in [16, 64, 256, 1024] {
            // The library's own path first; if its fetch fails on the backlog, the same
            // drain again with the backlog promoted by the benchmark (see promote_backlog).
            let native = drain(&url, &mut admin, setting, &cfg, n, conc, false).await?;
            let failed = !native.ok;
            let _ = writeln!(log, "   drain c={conc}: {:.0}/s {}", native.rate(), native.note);
            rows.push(native);
            if failed {
                rows.push(drain(&url, &mut admin, setting, &cfg, n, conc, true).await?);
                let r = rows.last().unwrap();
                let _ = writeln!(log, "   drain c={conc}, promoted: {:.0}/s {}", r.rate(), r.note);
            }
        }
        if latency_secs > 0 {
            for &poll_ms in &latency_modes {
                rows.push(latency(&url, &mut admin, setting, &cfg, latency_secs, poll_ms).await?);
            }
        }
    }

    if as_json {
        print_table(&rows, &mut std::io::stderr());
        let doc = json!({
            "peer": "apalis",
            "versions": VERSIONS,
            "redis_version": redis_version,
            "cores": cores,
            "n": n,
            "payload_bytes": payload_bytes,
            "settings": {
                "default": format!("{:?}", config(true)),
                "locks off": format!("{:?}", config(false)),
            },
            "results": rows.iter().map(|r| json!({
                "setting": r.setting,
                "workload": r.workload,
                "n": r.n,
                "seconds": r.seconds,
                "completed": r.ok,
                "tasks_per_s": if r.ok && r.throughput { json!(r.rate()) } else { Value::Null },
                "redis_cpu_us_per_task": r.us_per_task,
                "redis_cmds_per_task": r.cmds_per_task,
                "redis_cmd_calls": r.breakdown,
                "extra": r.extra,
                "note": r.note,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!();
        print_table(&rows, &mut std::io::stdout());
        if rows.iter().any(|r| r.workload.contains("promoted*")) {
            println!(
                "\n* apalis-redis's fetch could not take the backlog (Lua unpack limit); the \
                 benchmark moved it from the scheduled set to the active list inside the timed window."
            );
        }
    }
    drop(server);
    Ok(())
}
