//! `ballast job`: run a map-reduce job over a file, watch it, cancel it.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ballast::{Client, JobHeader, JobRecord, JobState};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::commands::parse_duration;
use crate::output;
use crate::CliError;

/// `ballast job`.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// Split a file into chunks at line boundaries, map each chunk, reduce the results.
    Run(RunArgs),
    /// Show a job: state, chunk counts, timings, result or error.
    Status {
        /// Job id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job and every task of it that has not ended.
    Cancel {
        /// Job id.
        id: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Queue for the job's tasks.
    #[arg(long)]
    queue: String,
    /// The input file.
    #[arg(long)]
    input: PathBuf,
    /// Map handler (e.g. wordcount, sum, exec).
    #[arg(long)]
    map: String,
    /// Reduce handler (e.g. merge-counts, sum).
    #[arg(long)]
    reduce: String,
    /// Lines per chunk.
    #[arg(long, conflicts_with = "chunk_bytes")]
    chunk_lines: Option<usize>,
    /// Bytes per chunk, at line boundaries [default: 524288].
    #[arg(long)]
    chunk_bytes: Option<usize>,
    /// Send each chunk as a path and byte range (for storage every worker can read) instead
    /// of its text: the input never goes through Redis.
    #[arg(long)]
    by_reference: bool,
    /// Failed chunks tolerated before the job fails (default: fail on the first).
    #[arg(long, default_value_t = 0)]
    tolerate: i64,
    /// Priority of the job's tasks.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// Cost of each map task.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    cost: i64,
    /// Cost of the reduce task.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    reduce_cost: i64,
    /// A tag the workers must carry (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Attempts per task.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    max_attempts: i64,
    /// Timeout of one attempt.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Largest chunk payload in bytes.
    #[arg(long, default_value_t = ballast::task::DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// Wait for the job to end (a progress bar shows when stdout is a terminal).
    #[arg(long)]
    wait: bool,
    /// Print the job record as JSON (with --wait, once it has ended).
    #[arg(long)]
    json: bool,
}

const DEFAULT_CHUNK_BYTES: usize = 512 << 10;

pub async fn run(url: &str, a: JobArgs) -> Result<(), CliError> {
    match a.command {
        JobCommand::Run(r) => run_job(url, r).await,
        JobCommand::Status { id, json } => {
            let client = Client::connect(url).await?;
            let j = client.job(&id).await?;
            let tasks = client.store().job_task_states(&j.queue, &id).await?;
            let mut by_state = std::collections::BTreeMap::new();
            for (_, s) in &tasks {
                *by_state.entry(s.as_str()).or_insert(0) += 1;
            }
            if json {
                let mut v = serde_json::to_value(&j).map_err(ballast::Error::from)?;
                v["running"] = json!(by_state.get("running").copied().unwrap_or(0));
                v["tasks"] = json!(by_state);
                output::print_json(&v)
            } else {
                print_job(&j);
                println!("tasks        {by_state:?}");
                Ok(())
            }
        }
        JobCommand::Cancel { id } => {
            let client = Client::connect(url).await?;
            let j = client.job(&id).await?;
            match client.store().cancel_job(&j.queue, &id).await? {
                ballast::store::Cancel::JobEnded(s) => {
                    Err(CliError::Usage(format!("job {id} already ended: {s}")))
                }
                _ => {
                    println!("{id}: cancelled");
                    Ok(())
                }
            }
        }
    }
}

/// Splits the file at line boundaries: each chunk ends after `max_lines` lines, or at the
/// first line end at or past `max_bytes`. Calls `emit(offset, bytes)` per chunk.
fn chunks(
    path: &Path,
    max_lines: Option<usize>,
    max_bytes: usize,
    mut emit: impl FnMut(u64, &[u8]) -> Result<(), CliError>,
) -> Result<usize, CliError> {
    let file =
        std::fs::File::open(path).map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut buf, mut lines, mut offset, mut n) = (Vec::new(), 0usize, 0u64, 0usize);
    loop {
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        if read > 0 {
            lines += 1;
        }
        let full = max_lines.map_or(buf.len() >= max_bytes, |m| lines >= m);
        if (read == 0 || full) && !buf.is_empty() {
            emit(offset, &buf)?;
            offset += buf.len() as u64;
            n += 1;
            buf.clear();
            lines = 0;
        }
        if read == 0 {
            return Ok(n);
        }
    }
}

async fn run_job(url: &str, a: RunArgs) -> Result<(), CliError> {
    let limits = ballast::Limits {
        max_payload_bytes: a.max_payload_bytes,
    };
    let mut header = JobHeader::new(&a.queue, &a.map, &a.reduce);
    header.tolerate = a.tolerate;
    header.priority = a.priority;
    header.cost = a.cost;
    header.reduce_cost = a.reduce_cost;
    header.tags = a.tags.clone();
    header.max_attempts = a.max_attempts;
    header.timeout_ms = i64::try_from(a.timeout.as_millis()).unwrap_or(i64::MAX);
    // Checked before connecting: a bad job writes nothing.
    header.validate(&limits).map_err(ballast::Error::from)?;
    let path = std::fs::canonicalize(&a.input)
        .map_err(|e| CliError::Io(format!("{}: {e}", a.input.display())))?;
    let client = Client::connect(url).await?.with_limits(limits);
    let mut upload = client.start_job(header)?;

    // A thread cuts the file into chunks (blocking reads) and hands them over a bounded
    // channel; they are uploaded in batches as they come. A chunk the limits refuse stops
    // both, and the upload is aborted: what was staged is dropped.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(64);
    let max_bytes = a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES).max(1);
    let (file, lines, by_ref) = (path.clone(), a.chunk_lines, a.by_reference);
    let cutter = std::thread::spawn(move || {
        chunks(&file, lines, max_bytes, |offset, bytes| {
            let v = if by_ref {
                json!({ "path": file, "offset": offset, "len": bytes.len() })
            } else {
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    CliError::Io(format!("{}: not UTF-8 near byte {offset}", file.display()))
                })?;
                json!({ "text": text })
            };
            tx.blocking_send(v)
                .map_err(|_| CliError::Io("the upload stopped".into()))
        })
    });
    let mut uploaded: Result<(), CliError> = Ok(());
    while let Some(v) = rx.recv().await {
        if let Err(e) = upload.add_chunk(&v).await {
            uploaded = Err(e.into());
            break;
        }
    }
    drop(rx);
    // The channel is closed, so the thread is ending; joining it blocks, so off the runtime.
    let cut = tokio::task::spawn_blocking(move || cutter.join())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| CliError::Io("the chunking thread panicked".into()))?;
    if let Err(e) = uploaded.and(cut.map(|_| ())) {
        upload.abort().await?;
        return Err(e);
    }
    let id = upload.commit().await?;
    if !a.wait {
        if a.json {
            output::print_json(&client.job(&id).await?)?;
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    let j = wait_with_progress(&client, &a.queue, &id).await?;
    if a.json {
        output::print_json(&j)?;
    } else {
        print_job(&j);
    }
    match j.state {
        JobState::Succeeded => Ok(()),
        s => Err(CliError::Usage(format!(
            "job {id} {}: {}",
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            j.error.unwrap_or_default()
        ))),
    }
}

/// Waits for the job; on a terminal, draws chunks done / total with rate and ETA.
async fn wait_with_progress(client: &Client, queue: &str, id: &str) -> Result<JobRecord, CliError> {
    let waiter = {
        let (client, queue, id) = (client.clone(), queue.to_string(), id.to_string());
        tokio::spawn(async move {
            client
                .wait_job(&queue, &id, Duration::from_secs(24 * 3600))
                .await
        })
    };
    if std::io::stdout().is_terminal() {
        let total = client.job(id).await?.total;
        let bar = ProgressBar::with_draw_target(
            Some(u64::try_from(total).unwrap_or(0)),
            ProgressDrawTarget::stdout(),
        )
        .with_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} chunks  {per_sec}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        // The bar redraws from the record five times a second; the wait blocks on events.
        while !waiter.is_finished() {
            if let Ok(j) = client.job(id).await {
                bar.set_position(u64::try_from(j.done + j.failed).unwrap_or(0));
                if j.state == JobState::Reducing {
                    bar.set_message("reducing");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bar.finish_and_clear();
    }
    Ok(waiter.await.map_err(|e| CliError::Io(e.to_string()))??)
}

fn print_job(j: &JobRecord) {
    println!("id           {}", j.id);
    println!(
        "state        {}",
        serde_json::to_value(j.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    );
    println!(
        "chunks       {} done, {} failed, {} in all",
        j.done, j.failed, j.total
    );
    println!("map, reduce  {}, {}", j.map_kind, j.reduce_kind);
    if let Some(f) = j.finished_at {
        println!("took         {} ms", f - j.submitted_at);
    }
    if let Some(e) = &j.error {
        println!("error        {e}");
    }
    if let Some(r) = &j.result {
        let text = r.to_string();
        let shown: String = text.chars().take(2000).collect();
        println!(
            "result       {shown}{}",
            if text.len() > shown.len() { " ..." } else { "" }
        );
    }
}
