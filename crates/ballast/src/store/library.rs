//! ballast's Lua, loaded into Redis once as a function library (`FUNCTION LOAD`) and called
//! with `FCALL`.
//!
//! Every body in `lua/` becomes one function of the library, and `lua/lib.lua` (key names,
//! server time, placement) is the library's shared code. Loaded once, the shared code is
//! neither compiled with each body nor redefined on every call, which is most of what a
//! short call costs; and Redis holds one copy of it, not one per function.
//!
//! The library's name carries a hash of its text, so two versions of ballast on one Redis
//! each call their own functions. A Redis that lost the library (a restart without
//! persistence, a failover to a replica that never had it, `FUNCTION FLUSH`) gets it again
//! on the first call that finds it missing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, ToRedisArgs};

use super::QUEUES_KEY;

const LIB: &str = include_str!("lua/lib.lua");

/// One function of the library: its name and the body it runs. Called as
/// `F.key(build, k).arg(a)...invoke_async(conn)` (a store calls `Store::call(F, k)`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Function {
    name: &'static str,
    body: &'static str,
}

impl Function {
    const fn new(name: &'static str, body: &'static str) -> Function {
        Function { name, body }
    }
}

/// Declares each function once: its constant, its body file `lua/<name>.lua`, and its
/// place in `ALL`.
macro_rules! functions {
    ($($constant:ident = $name:literal),* $(,)?) => {
        $(
            pub(crate) const $constant: Function =
                Function::new($name, include_str!(concat!("lua/", $name, ".lua")));
        )*
        /// Every function of the library.
        const ALL: &[Function] = &[$($constant),*];
    };
}

functions! {
    SUBMIT_TASK = "submit_task",
    SUBMIT_TASKS = "submit_tasks",
    REGISTER_WORKER = "register_worker",
    HEARTBEAT_WORKER = "heartbeat_worker",
    CLAIM_TASKS = "claim_tasks",
    FINISH_TASKS = "finish_tasks",
    LEAVE_WORKER = "leave_worker",
    RECOVER_WORKERS = "recover_workers",
    PROMOTE_TASKS = "promote_tasks",
    RETRY_DEAD = "retry_dead",
    CANCEL_TASK = "cancel_task",
    SUBMIT_JOB = "submit_job",
    CANCEL_JOB = "cancel_job",
    PURGE_DEAD = "purge_dead",
    RESYNC_WORKER = "resync_worker",
}

struct Library {
    /// The text `FUNCTION LOAD` takes.
    code: String,
    /// Function name -> the name Redis knows it by, `ballast_<hash>_<name>`.
    names: HashMap<&'static str, String>,
}

/// Where the library's name goes in its text before the text is hashed.
const NAME: &str = "{NAME}";

/// Which build of the library a store calls. The bench build also honours a queue's
/// bench-only placement policy (`ballast bench` runs its baselines on the same code); the
/// production build never reads the policy, so no call pays for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Build {
    Production,
    Bench,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| Library::build(Build::Production));
static BENCH_LIBRARY: LazyLock<Library> = LazyLock::new(|| Library::build(Build::Bench));

impl Build {
    fn library(self) -> &'static Library {
        match self {
            Build::Production => &LIBRARY,
            Build::Bench => &BENCH_LIBRARY,
        }
    }
}

impl Library {
    /// The library's text and names; the bench build sets lib.lua's BENCH.
    fn build(build: Build) -> Library {
        let bench = build == Build::Bench;
        let mut code = format!("#!lua name={NAME}\nlocal BENCH = {bench}\n{LIB}\n");
        for f in ALL {
            // A body sees the call's keys and arguments as KEYS and ARGV, as a script
            // would; the shared code reads the queue prefix, ARGV[1], from P.
            code.push_str(&format!(
                "redis.register_function('{NAME}_{}', function(KEYS, ARGV)\n\
                 P = ARGV[1]\nfirst_call()\n{}\nend)\n",
                f.name, f.body
            ));
        }
        // The SHA1 Redis would give the whole text; 12 hex digits tell versions apart.
        let hash = redis::Script::new(&code).get_hash()[..12].to_string();
        let name = format!("ballast_{hash}");
        Library {
            code: code.replace(NAME, &name),
            names: ALL
                .iter()
                .map(|f| (f.name, format!("{name}_{}", f.name)))
                .collect(),
        }
    }
}

impl Function {
    /// A call of this function with its one key (every ballast function takes one, under
    /// the queue's hash tag, so that Cluster routes the call).
    /// `build`: the library build the store calls.
    pub(crate) fn key<K: ToRedisArgs>(&self, build: Build, key: K) -> Call {
        let library = build.library();
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&library.names[self.name]).arg(1).arg(key);
        Call {
            request: Request::Alone(cmd),
            library,
        }
    }
}

/// What goes to Redis for a call: the `FCALL` alone, or in a pipeline after the `SADD` that
/// adds its queue to the directory (see [`Call::remembering_queue`]), whose reply is
/// dropped. Built once and sent by reference, also when the library has to be loaded
/// first: a batch call carries up to 1,000 payloads.
enum Request {
    Alone(Cmd),
    Preceded(redis::Pipeline),
}

/// A function call being built.
pub(crate) struct Call {
    request: Request,
    /// The library the function is in, loaded if Redis lacks it.
    library: &'static Library,
}

impl Call {
    /// Appends an argument (ARGV[n]).
    pub(crate) fn arg<A: ToRedisArgs>(&mut self, arg: A) -> &mut Call {
        match &mut self.request {
            Request::Alone(cmd) => {
                cmd.arg(arg);
            }
            // A pipeline's `arg` goes to its last command, the FCALL.
            Request::Preceded(pipe) => {
                pipe.arg(arg);
            }
        }
        self
    }

    /// Adds `queue` to the directory of queues just before the call, in the same round
    /// trip. It goes with every call that creates tasks or workers rather than once per
    /// handle: a Redis restarted without persistence must learn the queue again. Its reply
    /// is dropped, and its error does not fail the call (the directory is bookkeeping the
    /// call does not need): it is logged, once per process. Errors are told per command, so
    /// the call's own error (a missing library) keeps its detail rather than coming wrapped
    /// as a pipeline failure.
    pub(crate) fn remembering_queue(&mut self, queue: &str) -> &mut Call {
        if let Request::Alone(cmd) = &mut self.request {
            let mut pipe = redis::pipe();
            pipe.ignore_errors()
                .add_command(super::Store::remember_queue(queue))
                .add_command(std::mem::take(cmd));
            self.request = Request::Preceded(pipe);
        }
        self
    }

    /// Runs the call, loading the library first if Redis does not have it.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.query(conn).await {
            Err(e) if function_missing(&e) => {
                load(conn, self.library).await?;
                self.query(conn).await
            }
            Err(e) if e.to_string().contains("unknown command") => Err(RedisError::from((
                ErrorKind::Client,
                "this Redis has no functions: ballast needs Redis 7.0 or later",
                e.to_string(),
            ))),
            other => other,
        }
    }

    async fn query<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        match &self.request {
            Request::Alone(cmd) => cmd.query_async(conn).await,
            Request::Preceded(pipe) => {
                let (first, reply): (RedisResult<redis::Value>, RedisResult<T>) =
                    pipe.query_async(conn).await?;
                if let Err(e) = first {
                    if !DIRECTORY_FAILED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %e,
                            "cannot add the queue to the directory of queues ({QUEUES_KEY}): \
                             tasks and workers are stored, but `ballast status` will not list \
                             the queue; allow SADD on {QUEUES_KEY}"
                        );
                    }
                }
                reply
            }
        }
    }
}

/// Whether adding a queue to the directory of queues has failed in this process (told
/// once).
static DIRECTORY_FAILED: AtomicBool = AtomicBool::new(false);

fn function_missing(e: &RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.starts_with("Function not found"))
}

/// Loads the library; another client loading it at the same moment is not an error.
async fn load(conn: &mut impl ConnectionLike, library: &Library) -> RedisResult<()> {
    let loaded: RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&library.code)
        .query_async(conn)
        .await;
    match loaded {
        Err(e) if e.detail().is_some_and(|d| d.contains("already exists")) => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_hash_of_the_whole_text() {
        for build in [Build::Production, Build::Bench] {
            let lib = build.library();
            let name = lib.code["#!lua name=".len()..].lines().next().unwrap_or("");
            // Hashed with the name left out: bodies, shared code, function names, wrappers.
            let text = lib.code.replace(name, NAME);
            assert_eq!(
                &redis::Script::new(&text).get_hash()[..12],
                name.trim_start_matches("ballast_")
            );
            for f in ALL {
                assert_eq!(lib.names[f.name], format!("{name}_{}", f.name));
            }
        }
        // The two builds are two libraries, and only the bench build reads the policy.
        assert_ne!(LIBRARY.names, BENCH_LIBRARY.names);
        assert!(LIBRARY.code.contains("\nlocal BENCH = false\n"));
        assert!(BENCH_LIBRARY.code.contains("\nlocal BENCH = true\n"));
    }
}
