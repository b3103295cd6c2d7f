//! `ballast demo`: three workers of capacities 1, 2 and 4 on one queue, a mixed workload,
//! live progress, and a closing table that shows load following capacity.

use std::collections::BTreeMap;
use std::time::Duration;

use ballast::testing::RedisServer;
use ballast::{Client, Store, TaskRecord, TaskSpec, TaskState, Worker};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::watch;

use crate::output::print_table;
use crate::CliError;

/// `ballast demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the workload: this many sleep tasks and a third more (mixed costs), plus urgent echoes.
    #[arg(long, default_value_t = 96)]
    tasks: usize,
    /// Words in the generated text of the word-count job.
    #[arg(long, default_value_t = 2_000_000)]
    words: usize,
}

const CAPACITIES: [i64; 3] = [1, 2, 4];

pub async fn run(url: Option<String>, a: DemoArgs) -> Result<(), CliError> {
    // Keep the private server alive until the end of the run.
    let (_server, url) = match url {
        Some(u) => (None, u),
        None => {
            let s = RedisServer::start()?;
            let u = s.url();
            println!("started a private redis-server ({u})");
            (Some(s), u)
        }
    };
    // On a shared Redis, a fresh queue name keeps earlier runs out of the numbers.
    let suffix = ballast::task::new_id().to_lowercase();
    let queue = format!("demo-{}", &suffix[suffix.len() - 6..]);
    let store = Store::connect(&url).await?;
    let client = Client::new(store.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for cap in CAPACITIES {
        let worker = crate::builtin::install(
            Worker::new(store.clone(), &queue, cap).id(format!("{queue}-cap{cap}")),
            crate::builtin::ExecAllow::default(),
        );
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(worker.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    // Wait until all three have joined, so the first placements see every worker.
    while store.workers(&queue).await?.len() < CAPACITIES.len() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let specs = workload(&queue, a.tasks);
    let total = specs.len() as u64;
    println!(
        "queue {queue}: {total} tasks (sleep 100-300 ms; cost 1, 2 and 4; some urgent) on workers of capacity 1, 2 and 4"
    );
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    client.submit_many(&specs).await?;

    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let waiter = {
        let client = client.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            client
                .wait_all(&queue, &ids, Duration::from_secs(300))
                .await
        })
    };
    // The bar redraws from the counts ten times a second; the wait itself blocks on events.
    while !waiter.is_finished() {
        let c = store.counts(&queue).await?;
        bar.set_position(c.succeeded + c.failed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = waiter
        .await
        .map_err(|e| CliError::Io(format!("waiting task: {e}")))??;
    bar.finish_and_clear();

    report(&records)?;
    word_count(&client, &queue, a.words).await?;

    stop_tx.send_replace(true);
    for w in workers {
        w.await
            .map_err(|e| CliError::Io(format!("worker task: {e}")))??;
    }
    Ok(())
}

/// The distributed-computing half: a word count over a generated text, split into chunks,
/// mapped on the three workers and reduced to one result.
async fn word_count(client: &Client, queue: &str, words: usize) -> Result<(), CliError> {
    // A seeded text over a Zipf-like vocabulary, so a few words dominate as in real text.
    let vocabulary: Vec<String> = (0..2000).map(|i| format!("word{i}")).collect();
    let mut seed: u64 = 2026;
    let mut text = String::with_capacity(words * 8);
    for i in 0..words {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = ((seed >> 11) as f64) / ((1u64 << 53) as f64);
        let rank = ((vocabulary.len() as f64).powf(u) as usize).saturating_sub(1);
        text.push_str(&vocabulary[rank.min(vocabulary.len() - 1)]);
        text.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    println!();
    println!(
        "word count: {words} words ({} bytes) in chunks of 64 KiB",
        text.len()
    );
    let start = std::time::Instant::now();
    let mut upload =
        client.start_job(ballast::JobHeader::new(queue, "wordcount", "merge-counts"))?;
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let cut = rest
            .get(64 << 10..)
            .and_then(|tail| tail.find('\n').map(|i| rest.len() - tail.len() + i + 1))
            .unwrap_or(rest.len());
        upload.add_chunk(&json!({ "text": &rest[..cut] })).await?;
        rest = &rest[cut..];
    }
    let id = upload.commit().await?;
    let job = client
        .wait_job(queue, &id, Duration::from_secs(300))
        .await?;
    let took = start.elapsed();
    if job.state != ballast::JobState::Succeeded {
        return Err(CliError::Usage(format!(
            "word count job {id} ended {:?}: {:?}",
            job.state, job.error
        )));
    }
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(job.result.unwrap_or_default()).map_err(ballast::Error::from)?;
    let mut top: Vec<(&String, &u64)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let total: u64 = counts.values().sum();
    let chunks = client.store().job_task_states(queue, &id).await?.len() - 1;
    let rows: Vec<Vec<String>> = top
        .iter()
        .take(10)
        .map(|(w, n)| {
            vec![
                (*w).clone(),
                n.to_string(),
                format!("{:.2}%", 100.0 * **n as f64 / total as f64),
            ]
        })
        .collect();
    print_table(&["WORD", "COUNT", "SHARE"], &rows)?;
    println!(
        "{total} words ({} distinct) counted in {chunks} chunks by 3 workers in {:.2} s; the total matches the input: {}",
        counts.len(),
        took.as_secs_f64(),
        total == words as u64
    );
    if total != words as u64 {
        return Err(CliError::Usage(format!("counted {total} words of {words}")));
    }
    Ok(())
}

/// A mixed stream: of every twelve tasks nine cost 1, two cost 2 and one costs 4, in
/// submission order, plus a few urgent (priority 10) echoes that overtake the queue.
fn workload(queue: &str, n: usize) -> Vec<TaskSpec> {
    let total = n + n / 3;
    let mut specs: Vec<TaskSpec> = (0..total)
        .map(|i| {
            let cost = match i % 12 {
                9 | 10 => 2,
                11 => 4,
                _ => 1,
            };
            TaskSpec::new(queue, "sleep")
                .payload(json!({ "ms": 100 + (i as u64 * 37) % 200 }))
                .cost(cost)
        })
        .collect();
    specs.extend((0..n / 12).map(|i| {
        TaskSpec::new(queue, "echo")
            .payload(json!({ "urgent": i }))
            .priority(10)
    }));
    specs
}

#[derive(Default)]
struct PerWorker {
    capacity: i64,
    tasks: u64,
    work_ms: i64,
    events: Vec<(i64, i64)>,
}

fn report(records: &[TaskRecord]) -> Result<(), CliError> {
    let mut by: BTreeMap<String, PerWorker> = BTreeMap::new();
    for (name, cap) in CAPACITIES.iter().map(|c| (format!("cap{c}"), *c)) {
        by.insert(
            name,
            PerWorker {
                capacity: cap,
                ..Default::default()
            },
        );
    }
    let (mut first, mut last, mut failed) = (i64::MAX, 0, 0);
    for t in records {
        first = first.min(t.submitted_at);
        last = last.max(t.finished_at.unwrap_or(0));
        if t.state != TaskState::Succeeded {
            failed += 1;
        }
        let (Some(w), Some(s), Some(f)) = (&t.worker, t.started_at, t.finished_at) else {
            continue;
        };
        let key = w.rsplit('-').next().unwrap_or(w).to_string();
        let e = by.entry(key).or_default();
        e.tasks += 1;
        e.work_ms += t.cost * (f - s);
        e.events.push((s, t.cost));
        e.events.push((f, -t.cost));
    }
    let total_cap: i64 = by.values().map(|w| w.capacity).sum();
    let total_work: i64 = by.values().map(|w| w.work_ms).sum();
    let span_ms = (last - first).max(1);
    let rows: Vec<Vec<String>> = by
        .iter_mut()
        .map(|(name, w)| {
            // Finishes sort before starts at the same millisecond: a slot freed and
            // refilled in one function call is not counted twice.
            w.events.sort();
            let (mut load, mut peak) = (0, 0);
            for (_, d) in &w.events {
                load += d;
                peak = peak.max(load);
            }
            vec![
                name.clone(),
                w.capacity.to_string(),
                format!("{:.1}%", 100.0 * w.capacity as f64 / total_cap as f64),
                w.tasks.to_string(),
                format!("{:.1}", w.work_ms as f64 / 1000.0),
                format!(
                    "{:.1}%",
                    100.0 * w.work_ms as f64 / total_work.max(1) as f64
                ),
                format!(
                    "{:.0}%",
                    100.0 * w.work_ms as f64 / (w.capacity * span_ms) as f64
                ),
                format!("{peak}/{}", w.capacity),
            ]
        })
        .collect();
    println!();
    print_table(
        &[
            "WORKER",
            "CAPACITY",
            "CAP SHARE",
            "TASKS",
            "WORK (unit-s)",
            "WORK SHARE",
            "BUSY",
            "PEAK LOAD",
        ],
        &rows,
    )?;
    let makespan = (last - first) as f64 / 1000.0;
    let ideal = total_work as f64 / 1000.0 / total_cap as f64;
    println!();
    println!(
        "{} tasks, {failed} failed; makespan {makespan:.2} s, ideal {ideal:.2} s (total work / total capacity) = {:.2}x",
        records.len(),
        makespan / ideal.max(f64::EPSILON)
    );
    let wait = |urgent: bool| {
        let w: Vec<i64> = records
            .iter()
            .filter(|t| (t.priority > 0) == urgent)
            .filter_map(|t| Some(t.started_at? - t.submitted_at))
            .collect();
        w.iter().sum::<i64>() as f64 / w.len().max(1) as f64
    };
    println!(
        "mean wait before start: urgent (priority 10) {:.0} ms, others {:.0} ms",
        wait(true),
        wait(false)
    );
    println!("BUSY = work / (capacity x makespan); PEAK LOAD = most cost run at once / capacity");
    if failed > 0 {
        return Err(CliError::Usage(format!(
            "{failed} demo tasks did not succeed"
        )));
    }
    Ok(())
}
