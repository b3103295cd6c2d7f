//! The handlers every `ballast worker` knows: `noop`, `sleep`, `echo`, `stamp`, `fail`, `flaky`; for
//! jobs `wordcount` with the reducer `merge-counts`, and `sum` (map and reduce); and `exec`,
//! which runs only programs the worker was started with `--allow-exec` for.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ballast::{MapResults, TaskContext, TaskError, Worker};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::CliError;

/// Microseconds since the epoch, on this machine's clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))
}

/// Most bytes of a program's stdout (and of its stderr) kept in the result.
const OUTPUT_CAP: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sleep {
    ms: u64,
}

#[derive(Deserialize)]
struct Fail {
    #[serde(default = "default_message")]
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flaky {
    /// Attempts that fail before one succeeds.
    failures: i64,
}

fn default_message() -> String {
    "failed on purpose".to_string()
}

/// A job chunk: its text inline, or a byte range of a file every worker can read.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged, deny_unknown_fields)]
pub enum Chunk {
    /// The text itself.
    Inline {
        /// The chunk's text.
        text: String,
    },
    /// Bytes `offset..offset + len` of the file at `path`.
    Range {
        /// Absolute path, the same on every worker.
        path: PathBuf,
        /// First byte.
        offset: u64,
        /// Number of bytes.
        len: u64,
    },
}

impl Chunk {
    /// The chunk's text (read from its file for a range).
    fn text(self) -> Result<String, TaskError> {
        match self {
            Chunk::Inline { text } => Ok(text),
            Chunk::Range { path, offset, len } => {
                let read = || -> std::io::Result<Vec<u8>> {
                    let mut f = std::fs::File::open(&path)?;
                    f.seek(SeekFrom::Start(offset))?;
                    let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
                    f.read_exact(&mut buf)?;
                    Ok(buf)
                };
                let bytes =
                    read().map_err(|e| TaskError::retry(format!("{}: {e}", path.display())))?;
                String::from_utf8(bytes).map_err(|_| {
                    TaskError::permanent(format!("{}: not UTF-8 at {offset}+{len}", path.display()))
                })
            }
        }
    }
}

/// The programs `exec` may run, by canonical path.
#[derive(Debug, Clone, Default)]
pub struct ExecAllow(Arc<Vec<PathBuf>>);

impl ExecAllow {
    /// Resolves each allowed program; a path that does not exist is an error at start.
    pub fn new(paths: &[PathBuf]) -> Result<Self, CliError> {
        let resolved = paths
            .iter()
            .map(|p| {
                std::fs::canonicalize(p)
                    .map_err(|e| CliError::Usage(format!("--allow-exec {}: {e}", p.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExecAllow(Arc::new(resolved)))
    }

    fn check(&self, program: &str) -> Result<PathBuf, TaskError> {
        let refused = || {
            TaskError::permanent(format!(
                "exec: {program:?} is not allowed on this worker (start it with --allow-exec {program})"
            ))
        };
        let resolved = std::fs::canonicalize(program).map_err(|_| refused())?;
        if self.0.contains(&resolved) {
            Ok(resolved)
        } else {
            Err(refused())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exec {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

/// Adds the built-in handlers to a worker.
pub fn install(worker: Worker, allow: ExecAllow) -> Worker {
    worker
        .handle("noop", |_: TaskContext, _: Value| async {
            Ok::<_, TaskError>(Value::Null)
        })
        .handle("sleep", |_: TaskContext, p: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok::<_, TaskError>(json!({ "slept_ms": p.ms }))
        })
        .handle("echo", |_: TaskContext, p: Value| async move {
            Ok::<_, TaskError>(p)
        })
        .handle("stamp", |_: TaskContext, _: Value| async {
            // When the handler started: `ballast bench` measures pickup latency with it.
            Ok::<_, TaskError>(json!({ "started_us": now_us() }))
        })
        .handle("fail", |_: TaskContext, p: Fail| async move {
            Err::<Value, _>(TaskError::retry(p.message))
        })
        .handle("flaky", |ctx: TaskContext, p: Flaky| async move {
            if ctx.attempt <= p.failures {
                return Err(TaskError::retry(format!(
                    "attempt {} fails on purpose",
                    ctx.attempt
                )));
            }
            Ok(json!({ "succeeded_on_attempt": ctx.attempt }))
        })
        .handle("wordcount", |_: TaskContext, c: Chunk| async move {
            let text = c.text()?;
            Ok::<_, TaskError>(json!(count_words(&text)))
        })
        .reduce(
            "merge-counts",
            |_: TaskContext, mut results: MapResults| async move {
                let mut total: HashMap<String, u64> = HashMap::new();
                while let Some((chunk, counts)) = results.next().await? {
                    let counts: HashMap<String, u64> =
                        serde_json::from_value(counts).map_err(|e| {
                            TaskError::permanent(format!("chunk {chunk}: not word counts: {e}"))
                        })?;
                    for (w, n) in counts {
                        *total.entry(w).or_default() += n;
                    }
                }
                // Sorted by word: the same input gives the same bytes.
                Ok::<_, TaskError>(total.into_iter().collect::<BTreeMap<_, _>>())
            },
        )
        .handle("sum", |_: TaskContext, c: Chunk| async move {
            let text = c.text()?;
            let mut s = Sum::default();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if !line.is_empty() {
                    s.add_text(line).map_err(|_| {
                        TaskError::permanent(format!("line {}: {line:?} is not a number", i + 1))
                    })?;
                }
            }
            Ok::<_, TaskError>(s.value())
        })
        .reduce(
            "sum",
            |_: TaskContext, mut results: MapResults| async move {
                let mut s = Sum::default();
                while let Some((chunk, v)) = results.next().await? {
                    // A map sum past i64 comes as a string of digits.
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    s.add_text(&text).map_err(|_| {
                        TaskError::permanent(format!("chunk {chunk}: {v} is not a number"))
                    })?;
                }
                Ok::<_, TaskError>(s.value())
            },
        )
        .handle("exec", move |_: TaskContext, p: Exec| {
            let allow = allow.clone();
            async move { exec(&allow, p).await }
        })
}

/// Word counts of a text: words are runs of non-whitespace.
fn count_words(text: &str) -> BTreeMap<&str, u64> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for w in text.split_ascii_whitespace() {
        *counts.entry(w).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// A sum that stays an exact integer while every number is one.
#[derive(Default)]
struct Sum {
    int: i128,
    float: f64,
    is_float: bool,
}

impl Sum {
    fn add_text(&mut self, s: &str) -> Result<(), ()> {
        if let Ok(i) = s.parse::<i128>() {
            self.int = self.int.checked_add(i).ok_or(())?;
        } else {
            self.float += s.parse::<f64>().map_err(|_| ())?;
            self.is_float = true;
        }
        Ok(())
    }

    fn value(&self) -> Value {
        if self.is_float {
            json!(self.float + self.int as f64)
        } else if let Ok(i) = i64::try_from(self.int) {
            json!(i)
        } else {
            json!(self.int.to_string())
        }
    }
}

/// Kills a child's whole process group when dropped (a timeout or a cancel drops the
/// handler's future), unless the child was reaped first.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Reads a pipe to its end, keeping the first OUTPUT_CAP bytes; the rest is read and
/// dropped so the program never blocks on a full pipe.
async fn capture<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> (String, bool) {
    let (mut kept, mut buf, mut truncated) = (Vec::new(), [0u8; 8192], false);
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        truncated |= n > room;
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

/// Runs an allowed program with its arguments as a list (never through a shell), with an
/// empty environment, in a process group of its own.
async fn exec(allow: &ExecAllow, p: Exec) -> Result<Value, TaskError> {
    let program = allow.check(&p.program)?;
    let mut child = tokio::process::Command::new(&program)
        .args(&p.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::retry(format!("exec {}: {e}", program.display())))?;
    let mut guard = GroupKill(child.id().and_then(|id| i32::try_from(id).ok()));
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let read_out = async move {
        match out {
            Some(o) => capture(o).await,
            None => (String::new(), false),
        }
    };
    let read_err = async move {
        match err {
            Some(e) => capture(e).await,
            None => (String::new(), false),
        }
    };
    let ((stdout, t1), (stderr, t2), status) = tokio::join!(read_out, read_err, child.wait());
    guard.0 = None;
    let status =
        status.map_err(|e| TaskError::retry(format!("exec {}: {e}", program.display())))?;
    let code = status.code().unwrap_or(-1);
    if !status.success() {
        let tail: String = stderr
            .chars()
            .rev()
            .take(500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(TaskError::retry(format!(
            "{} exited with code {code}: {tail}",
            program.display()
        )));
    }
    Ok(json!({ "exit_code": code, "stdout": stdout, "stderr": stderr, "truncated": t1 || t2 }))
}
