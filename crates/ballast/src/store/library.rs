//! ballast's Lua, loaded into Redis once as a function library (`FUNCTION LOAD`) and called
//! with `FCALL`.
//!
//! Every script body in `lua/` becomes one function of the library, and `lua/lib.lua` (key
//! names, server time, placement) is the library's shared code. Loaded once, the shared
//! code is not compiled into every script and not redefined on every call, which is most of
//! what a short call costs; and Redis holds one copy of it, not one per script.
//!
//! The library's name carries a hash of its text, so two versions of ballast on one Redis
//! each call their own functions. A Redis that lost the library (a restart without
//! persistence, a failover to a replica that never had it, `FUNCTION FLUSH`) gets it again
//! on the first call that finds it missing.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, ToRedisArgs};

const LIB: &str = include_str!("lua/lib.lua");

/// Function names and the script bodies they run.
const BODIES: [(&str, &str); 16] = [
    ("submit_task", include_str!("lua/submit_task.lua")),
    ("submit_tasks", include_str!("lua/submit_tasks.lua")),
    ("register_worker", include_str!("lua/register_worker.lua")),
    ("heartbeat_worker", include_str!("lua/heartbeat_worker.lua")),
    ("claim_tasks", include_str!("lua/claim_tasks.lua")),
    ("finish_task", include_str!("lua/finish_task.lua")),
    ("finish_tasks", include_str!("lua/finish_tasks.lua")),
    ("leave_worker", include_str!("lua/leave_worker.lua")),
    ("recover_workers", include_str!("lua/recover_workers.lua")),
    ("promote_tasks", include_str!("lua/promote_tasks.lua")),
    ("retry_dead", include_str!("lua/retry_dead.lua")),
    ("cancel_task", include_str!("lua/cancel_task.lua")),
    ("submit_job", include_str!("lua/submit_job.lua")),
    ("cancel_job", include_str!("lua/cancel_job.lua")),
    ("purge_dead", include_str!("lua/purge_dead.lua")),
    ("resync_worker", include_str!("lua/resync_worker.lua")),
];

struct Library {
    /// `ballast_<hash>`; each function is `<name>_<body name>`.
    name: String,
    /// The text `FUNCTION LOAD` takes.
    code: String,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let mut text = String::from(LIB);
    for (_, body) in BODIES {
        text.push_str(body);
    }
    // The SHA1 Redis would give the text; 12 hex digits tell versions apart.
    let hash = redis::Script::new(&text).get_hash()[..12].to_string();
    let name = format!("ballast_{hash}");
    let mut code = format!("#!lua name={name}\n{LIB}\n");
    for (function, body) in BODIES {
        // A body sees the call's keys and arguments as KEYS and ARGV, as a script would;
        // the shared code reads the queue prefix, ARGV[1], from P.
        code.push_str(&format!(
            "redis.register_function('{name}_{function}', function(KEYS, ARGV)\n\
             P = ARGV[1]\n{body}\nend)\n"
        ));
    }
    Library { name, code }
});

/// One function of the library, called as `F.key(k).arg(a)...invoke_async(conn)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Function(pub(crate) &'static str);

impl Function {
    /// A call of this function with its one key (every ballast function takes one, under
    /// the queue's hash tag, so that Cluster routes the call).
    pub(crate) fn key<K: ToRedisArgs>(&self, key: K) -> Call {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(format!("{}_{}", LIBRARY.name, self.0))
            .arg(1)
            .arg(key);
        Call { cmd }
    }
}

/// A function call being built.
pub(crate) struct Call {
    cmd: Cmd,
}

impl Call {
    /// Appends an argument (ARGV[n]).
    pub(crate) fn arg<A: ToRedisArgs>(&mut self, arg: A) -> &mut Call {
        self.cmd.arg(arg);
        self
    }

    /// Runs the call, loading the library first if Redis does not have it.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if function_missing(&e) => {
                load(conn).await?;
                self.cmd.query_async(conn).await
            }
            Err(e) if e.to_string().contains("unknown command") => Err(RedisError::from((
                ErrorKind::Client,
                "this Redis has no functions: ballast needs Redis 7.0 or later",
                e.to_string(),
            ))),
            other => other,
        }
    }
}

fn function_missing(e: &RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.starts_with("Function not found"))
}

/// Loads the library; another client loading it at the same moment is not an error.
async fn load(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let loaded: RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&LIBRARY.code)
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
    fn every_function_is_registered_under_the_versioned_name() {
        let lib = &*LIBRARY;
        assert!(lib.name.starts_with("ballast_") && lib.name.len() == "ballast_".len() + 12);
        assert!(lib.code.starts_with(&format!("#!lua name={}\n", lib.name)));
        for (function, _) in BODIES {
            assert!(lib.code.contains(&format!(
                "redis.register_function('{}_{function}',",
                lib.name
            )));
        }
    }
}
