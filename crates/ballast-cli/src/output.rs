//! How the CLI prints: aligned tables for people, stable JSON for scripts.
//!
//! JSON shapes (stable; fields may be added, never renamed or removed):
//! - a task record: `id, queue, kind, state, priority, cost, tags, worker, attempts, runs,
//!   requeues, max_attempts, timeout_ms, lease, submitted_at, assigned_at, started_at,
//!   finished_at, run_at, payload, result, error, history` (times in ms on the Redis clock;
//!   absent ones are null);
//! - `status`: `{"queues": [{"queue", "counts": {scheduled, pending, parked, assigned,
//!   running, succeeded, failed, cancelled}, "workers": [{id, state, capacity, assigned,
//!   tags, heartbeat_at, registered_at, finished, epoch}]}]}`.

use std::io::Write;

use ballast::{QueueCounts, TaskRecord, WorkerRecord};
use serde::Serialize;

use crate::CliError;

/// One queue in `status`.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    pub queue: String,
    pub counts: QueueCounts,
    pub workers: Vec<WorkerRecord>,
}

fn io(e: std::io::Error) -> CliError {
    CliError::Io(e.to_string())
}

pub fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(ballast::Error::from)?;
    writeln!(std::io::stdout().lock(), "{text}").map_err(io)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn tags(t: &[String]) -> String {
    if t.is_empty() {
        "-".to_string()
    } else {
        t.join(",")
    }
}

pub fn print_task(t: &TaskRecord) -> Result<(), CliError> {
    let rows = [
        ("id", t.id.clone()),
        ("state", t.state.to_string()),
        ("queue", t.queue.clone()),
        ("kind", t.kind.clone()),
        ("priority", t.priority.to_string()),
        ("cost", t.cost.to_string()),
        ("tags", tags(&t.tags)),
        ("worker", opt(&t.worker)),
        ("attempts", format!("{}/{}", t.attempts, t.max_attempts)),
        ("submitted_at", t.submitted_at.to_string()),
        ("started_at", opt(&t.started_at)),
        ("finished_at", opt(&t.finished_at)),
        ("run_at", opt(&t.run_at)),
        ("payload", t.payload.to_string()),
        ("result", opt(&t.result)),
        ("error", opt(&t.error)),
    ];
    let mut out = std::io::stdout().lock();
    for (k, v) in rows {
        writeln!(out, "{k:<13} {v}").map_err(io)?;
    }
    for h in &t.history {
        writeln!(
            out,
            "attempt {}: {} on {} at {}{}",
            h["attempt"].as_i64().unwrap_or(0),
            h["outcome"].as_str().unwrap_or("?"),
            h["worker"].as_str().unwrap_or("?"),
            h["finished_at"],
            h["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
        .map_err(io)?;
    }
    Ok(())
}

pub fn print_dead_table(list: &[TaskRecord]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.clone(),
                format!("{}/{}", t.attempts, t.max_attempts),
                opt(&t.finished_at),
                opt(&t.error),
            ]
        })
        .collect();
    print_table(&["ID", "KIND", "ATTEMPTS", "FAILED_AT", "ERROR"], &rows)
}

/// Prints rows under a header with columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec())).map_err(io)?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect())).map_err(io)?;
    }
    Ok(())
}

pub fn print_task_table(list: &[TaskRecord]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.state.to_string(),
                t.kind.clone(),
                t.priority.to_string(),
                t.cost.to_string(),
                tags(&t.tags),
                opt(&t.worker),
                format!("{}/{}", t.attempts, t.max_attempts),
                t.submitted_at.to_string(),
                opt(&t.started_at),
                opt(&t.finished_at),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "STATE",
            "KIND",
            "PRIO",
            "COST",
            "TAGS",
            "WORKER",
            "ATTEMPTS",
            "SUBMITTED",
            "STARTED",
            "FINISHED",
        ],
        &rows,
    )
}

pub fn print_status(report: &[QueueStatus]) -> Result<(), CliError> {
    if report.is_empty() {
        println!("no queues yet");
    }
    for (i, q) in report.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let c = &q.counts;
        println!(
            "queue {}: scheduled {}, pending {} (parked {}), assigned {}, running {}, succeeded {}, failed {}, cancelled {}",
            q.queue,
            c.scheduled,
            c.pending,
            c.parked,
            c.assigned,
            c.running,
            c.succeeded,
            c.failed,
            c.cancelled
        );
        let rows: Vec<Vec<String>> = q
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.state.clone(),
                    w.capacity.to_string(),
                    w.assigned.to_string(),
                    tags(&w.tags),
                    w.heartbeat_at.to_string(),
                    w.finished.to_string(),
                ]
            })
            .collect();
        if rows.is_empty() {
            println!("no workers");
        } else {
            print_table(
                &[
                    "WORKER",
                    "STATE",
                    "CAPACITY",
                    "ASSIGNED",
                    "TAGS",
                    "HEARTBEAT_AT",
                    "FINISHED",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}
