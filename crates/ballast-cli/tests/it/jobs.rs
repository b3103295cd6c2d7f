//! Jobs end to end through the `ballast` binary: word counts equal to a one-process count
//! (inline and by reference, and with a worker killed halfway), a failing chunk failing the
//! job, and the `exec` handler's safety.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ballast::{JobState, TaskState};
use serde_json::Value;

use crate::cli::{ballast, stdout, worker_with, FAST};
use crate::harness::{eventually, Env, WAIT};

/// Writes a text of `lines` lines of words from a small vocabulary (a seeded generator) and
/// returns its word counts, counted here in one pass.
fn text(path: &Path, lines: usize) -> BTreeMap<String, u64> {
    let mut seed: u64 = 42;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let mut out = String::new();
    for _ in 0..lines {
        let n = 1 + next(10);
        let words: Vec<String> = (0..n).map(|_| format!("w{}", next(500))).collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    std::fs::write(path, &out).expect("write");
    let mut counts = BTreeMap::new();
    for w in out.split_ascii_whitespace() {
        *counts.entry(w.to_string()).or_default() += 1;
    }
    counts
}

fn run_job(env: &Env, args: &[&str]) -> (bool, Value) {
    let mut full = vec!["job", "run", "--queue", "q", "--wait", "--json"];
    full.extend(args);
    let out = ballast(env, &full);
    let v = serde_json::from_slice(&out.stdout).expect("job json");
    (out.status.success(), v)
}

fn counts_of(v: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v["result"].clone()).expect("counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_counts_equal_a_one_process_count_inline_and_by_reference() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("in.txt");
    let want = text(&input, 20_000);
    let _a = worker_with(&env, "q", "a", 1, &[], &[]).await;
    let _b = worker_with(&env, "q", "b", 2, &[], &[]).await;
    let path = input.to_str().expect("path");
    let common = [
        "--input",
        path,
        "--map",
        "wordcount",
        "--reduce",
        "merge-counts",
    ];

    let mut args = common.to_vec();
    args.extend(["--chunk-bytes", "16384"]);
    let (ok, inline) = run_job(&env, &args);
    assert!(ok, "{inline}");
    assert!(inline["total"].as_i64().expect("total") > 5);
    assert_eq!(counts_of(&inline), want);

    let mut args = common.to_vec();
    args.extend(["--by-reference", "--chunk-lines", "1000"]);
    let (ok, by_ref) = run_job(&env, &args);
    assert!(ok, "{by_ref}");
    assert_eq!(by_ref["total"], 20);
    assert_eq!(counts_of(&by_ref), want);
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_halfway_changes_nothing_and_the_reduce_runs_once() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("in.txt");
    let want = text(&input, 40_000);
    let mut a = worker_with(&env, "q", "a", 2, &[], &FAST).await;
    let _b = worker_with(&env, "q", "b", 2, &[], &FAST).await;
    let out = stdout(&ballast(
        &env,
        &[
            "job",
            "run",
            "--queue",
            "q",
            "--input",
            input.to_str().expect("p"),
            "--map",
            "wordcount",
            "--reduce",
            "merge-counts",
            "--chunk-lines",
            "100",
        ],
    ));
    let jid = out.trim().to_string();
    let (client, jid_ref) = (&env.client, jid.as_str());
    eventually("a third of the chunks are done", WAIT, || async move {
        let j = client.job(jid_ref).await.expect("job");
        if j.done * 3 >= j.total {
            return true;
        }
        assert_eq!(j.state, JobState::Running, "{j:?}");
        false
    })
    .await;
    a.0.kill().expect("kill -9");
    let j = env
        .client
        .wait_job("q", &jid, Duration::from_secs(120))
        .await
        .expect("job");
    assert_eq!(j.state, JobState::Succeeded, "{:?}", j.error);
    assert_eq!(j.done, 400);
    let got: BTreeMap<String, u64> =
        serde_json::from_value(j.result.clone().expect("result")).expect("counts");
    assert_eq!(got, want);
    let reduce = env
        .client
        .task(j.reduce_task.as_deref().expect("reduce"))
        .await
        .expect("task");
    assert_eq!((reduce.state, reduce.runs), (TaskState::Succeeded, 1));
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_always_fails_fails_the_job_and_leaves_nothing_running() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("numbers.txt");
    let mut lines: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    lines[57] = "fifty-eight".into();
    std::fs::write(&input, lines.join("\n")).expect("write");
    let _w = worker_with(
        &env,
        "q",
        "w",
        2,
        &[],
        &["--retry-base", "50ms", "--promote-period", "20ms"],
    )
    .await;
    let (ok, j) = run_job(
        &env,
        &[
            "--input",
            input.to_str().expect("p"),
            "--map",
            "sum",
            "--reduce",
            "sum",
            "--chunk-lines",
            "10",
        ],
    );
    assert!(!ok);
    assert_eq!(j["state"], "failed");
    assert_eq!(j["first_failed_chunk"], 5);
    let err = j["error"].as_str().expect("error");
    assert!(
        err.starts_with("chunk 5 failed: line 8: \"fifty-eight\" is not a number"),
        "{err}"
    );
    let jid = j["id"].as_str().expect("id");
    for (t, s) in env.store.job_task_states("q", jid).await.expect("states") {
        assert!(s.is_terminal() || s == TaskState::Running, "{t} is {s}");
    }
    // A running chunk is asked to stop; once the worker has told, nothing runs.
    let store = &env.store;
    eventually("every task of the job has ended", WAIT, || async move {
        let states = store.job_task_states("q", jid).await.expect("states");
        states.iter().all(|(_, s)| s.is_terminal())
    })
    .await;

    // The same numbers without the bad line sum exactly.
    lines[57] = "58".into();
    std::fs::write(&input, lines.join("\n")).expect("write");
    let (ok, j) = run_job(
        &env,
        &[
            "--input",
            input.to_str().expect("p"),
            "--map",
            "sum",
            "--reduce",
            "sum",
            "--chunk-lines",
            "7",
        ],
    );
    assert!(ok, "{j}");
    assert_eq!(j["result"], 5050);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_only_allowed_programs_without_a_shell_and_kills_on_timeout() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let marker = dir.path().join("x");
    let echo = which("echo");
    let sleep = which("sleep");
    let _w = worker_with(
        &env,
        "q",
        "w",
        2,
        &[],
        &["--allow-exec", &echo, "--allow-exec", &sleep],
    )
    .await;
    let submit = |payload: String, extra: &[&str]| {
        let mut args = vec![
            "submit",
            "--queue",
            "q",
            "--kind",
            "exec",
            "--payload",
            &payload,
            "--max-attempts",
            "1",
        ];
        args.extend(extra);
        stdout(&ballast(&env, &args)).trim().to_string()
    };
    let literal = format!("; touch {}", marker.display());
    let ok = submit(
        serde_json::json!({ "program": echo, "args": [literal] }).to_string(),
        &[],
    );
    let refused = submit(
        serde_json::json!({ "program": which("touch"), "args": [marker] }).to_string(),
        &[],
    );
    let slow = submit(
        serde_json::json!({ "program": sleep, "args": ["31.7"] }).to_string(),
        &["--timeout", "300ms"],
    );
    let ids = [ok, refused, slow];
    let r = env
        .client
        .wait_all("q", &ids, Duration::from_secs(30))
        .await
        .expect("done");

    assert_eq!(r[0].state, TaskState::Succeeded);
    let result = r[0].result.clone().expect("result");
    assert_eq!(result["stdout"], format!("{literal}\n"));
    assert_eq!(result["exit_code"], 0);
    assert!(!marker.exists(), "the argument went through a shell");

    assert_eq!(r[1].state, TaskState::Failed);
    let e = r[1].error.as_deref().expect("error");
    assert!(
        e.contains("is not allowed on this worker (start it with --allow-exec"),
        "{e}"
    );
    assert!(!marker.exists());

    assert_eq!(
        (r[2].state, r[2].error.as_deref()),
        (TaskState::Failed, Some("timed out after 300 ms"))
    );
    // The program's process group was killed with the attempt.
    eventually("the timed-out program is gone", WAIT, || async {
        let found = tokio::process::Command::new("pgrep")
            .args(["-f", "sleep 31.7"])
            .output()
            .await
            .expect("pgrep");
        !found.status.success()
    })
    .await;
}

/// The path of a program on this machine (not a shell builtin).
fn which(program: &str) -> String {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} not found"))
        .to_string_lossy()
        .into_owned()
}
