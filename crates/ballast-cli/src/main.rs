//! `ballast`: the command line for the ballast task scheduler.

mod bench;
mod builtin;
mod commands;
mod dead;
mod demo;
mod job;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default Redis when neither `--redis` nor `BALLAST_REDIS_URL` is given.
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// ballast: a distributed task scheduler on Redis.
#[derive(Parser, Debug)]
#[command(name = "ballast", version, about)]
pub struct Cli {
    /// Redis URL (redis://host:port/db or redis+unix:///path.sock) [default: redis://127.0.0.1:6379]
    #[arg(long, global = true, env = "BALLAST_REDIS_URL")]
    pub redis: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a worker with the built-in handlers (noop, sleep, echo, stamp, fail, flaky,
    /// wordcount, merge-counts, sum, exec) until SIGINT/SIGTERM.
    ///
    /// For jobs: wordcount maps and merge-counts reduces its word counts; sum both maps and
    /// reduces. exec runs only the programs given with --allow-exec.
    Worker(commands::WorkerArgs),
    /// Submit one task (prints its id), or many from a JSON-lines file (one id per line).
    Submit(commands::SubmitArgs),
    /// Show one task's record.
    Task(commands::TaskArgs),
    /// List the records of a queue's tasks.
    Tasks(commands::TasksArgs),
    /// Show counts by state per queue and the workers of each queue.
    Status(commands::StatusArgs),
    /// Cancel a task: at once if it has not started, else its worker is told to stop it.
    Cancel(commands::CancelArgs),
    /// Set how many finished tasks a queue keeps, and for how long.
    Retention(commands::RetentionArgs),
    /// Dead letters: tasks that failed for good (ls, show, retry, purge).
    Dead(dead::DeadArgs),
    /// Map-reduce jobs over a file's chunks (run, status, cancel).
    Job(job::JobArgs),
    /// Measure throughput, latency, placement cost and scheduling quality on a private
    /// redis-server (or --redis).
    Bench(bench::BenchArgs),
    /// Run three workers of capacities 1, 2 and 4 on a mixed workload and show how load
    /// followed capacity. Starts a private redis-server unless --redis is given.
    Demo(demo::DemoArgs),
}

/// A CLI failure: printed as one line on stderr, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the library.
    #[error(transparent)]
    Ballast(#[from] ballast::Error),
    /// Reading a file or writing output.
    #[error("{0}")]
    Io(String),
    /// An argument the library does not check.
    #[error("{0}")]
    Usage(String),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line names the argument and the problem.
            let text = e.render().to_string();
            eprintln!(
                "ballast: {}",
                text.lines()
                    .next()
                    .unwrap_or("bad arguments")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let filter = match cli.command {
        Command::Worker(_) => "ballast=info,warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .init();
    // Workers (and the demo, which runs three) run handlers side by side on every core; the
    // other commands are clients, for which one thread means no hand-off between threads on
    // each Redis call (a third more one-by-one submits per second on 2 cores).
    let runtime = match &cli.command {
        Command::Worker(_) | Command::Demo(_) => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ballast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ballast: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let url = cli.redis.clone();
    let url_or_default = || url.clone().unwrap_or_else(|| DEFAULT_REDIS.to_string());
    match cli.command {
        Command::Worker(a) => commands::worker(&url_or_default(), a).await,
        Command::Submit(a) => commands::submit(&url_or_default(), a).await,
        Command::Task(a) => commands::task(&url_or_default(), a).await,
        Command::Tasks(a) => commands::tasks(&url_or_default(), a).await,
        Command::Status(a) => commands::status(&url_or_default(), a).await,
        Command::Cancel(a) => commands::cancel(&url_or_default(), a).await,
        Command::Retention(a) => commands::retention(&url_or_default(), a).await,
        Command::Dead(a) => dead::run(&url_or_default(), a).await,
        Command::Job(a) => job::run(&url_or_default(), a).await,
        Command::Bench(a) => bench::run(url, a).await,
        Command::Demo(a) => demo::run(url, a).await,
    }
}
