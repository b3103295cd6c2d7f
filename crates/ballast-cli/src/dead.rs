//! `ballast dead`: inspect, retry and purge a queue's dead letters (tasks that failed for good).

use ballast::{Store, TaskState};
use clap::{Args, Subcommand};

use crate::output;
use crate::CliError;

/// Most dead letters one command reads or changes.
const LIMIT: usize = 100_000;

/// `ballast dead`.
#[derive(Args, Debug)]
pub struct DeadArgs {
    #[command(subcommand)]
    command: DeadCommand,
}

#[derive(Subcommand, Debug)]
enum DeadCommand {
    /// List the dead letters, oldest first.
    Ls {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// Print a JSON array of records.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its attempt history.
    Show {
        /// Queue.
        #[arg(long)]
        queue: String,
        /// Task id.
        id: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to pending with fresh attempts.
    Retry(Pick),
    /// Delete dead letters for good.
    Purge(Pick),
}

#[derive(Args, Debug)]
struct Pick {
    /// Queue.
    #[arg(long)]
    queue: String,
    /// Task ids.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every dead letter of the queue.
    #[arg(long)]
    all: bool,
}

fn check_queue(q: &str) -> Result<(), CliError> {
    ballast::task::check_name("queue", q).map_err(|e| CliError::Ballast(e.into()))
}

pub async fn run(url: &str, a: DeadArgs) -> Result<(), CliError> {
    let store = Store::connect(url).await?;
    match a.command {
        DeadCommand::Ls { queue, json } => {
            check_queue(&queue)?;
            let list = store.tasks(&queue, Some(TaskState::Failed), LIMIT).await?;
            if json {
                output::print_json(&list)
            } else {
                output::print_dead_table(&list)
            }
        }
        DeadCommand::Show { queue, id, json } => {
            check_queue(&queue)?;
            let t = store
                .task(&queue, &id)
                .await?
                .filter(|t| t.state == TaskState::Failed)
                .ok_or_else(|| {
                    CliError::Usage(format!("task {id} is not a dead letter of {queue}"))
                })?;
            if json {
                output::print_json(&t)
            } else {
                output::print_task(&t)
            }
        }
        DeadCommand::Retry(p) => {
            check_queue(&p.queue)?;
            let ids = pick(&store, &p).await?;
            let n = store.retry_dead(&p.queue, &ids).await?;
            println!("{n} dead letters sent back to pending");
            Ok(())
        }
        DeadCommand::Purge(p) => {
            check_queue(&p.queue)?;
            let ids = pick(&store, &p).await?;
            let n = store.purge_dead(&p.queue, &ids).await?;
            println!("{n} dead letters purged");
            Ok(())
        }
    }
}

async fn pick(store: &Store, p: &Pick) -> Result<Vec<String>, CliError> {
    if p.all {
        Ok(store.dead_ids(&p.queue, LIMIT).await?)
    } else {
        Ok(p.ids.clone())
    }
}
